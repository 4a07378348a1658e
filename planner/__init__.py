"""Tool protocols, the token-in/token-out rollout engine, Trajectory and Agent. Knows nothing of TRL."""

from delegate.planner.agent import Agent, Solution
from delegate.planner.config import AgentConfig, PlannerConfig
from delegate.planner.engine import EngineLimits, RolloutEngine
from delegate.planner.generation import Generated, GenerationBackend, TransformersGeneration
from delegate.planner.protocols import Markers, build_protocol
from delegate.planner.trajectory import ToolCall, Trajectory

__all__ = ["Agent", "AgentConfig", "EngineLimits", "Generated", "GenerationBackend", "Markers", "PlannerConfig",
           "RolloutEngine", "Solution", "ToolCall", "Trajectory", "TransformersGeneration", "build_protocol"]
