"""Tool protocols, the token-in/token-out rollout engine, Trajectory and Agent. Knows nothing of TRL."""

from planner.agent import Agent, Solution
from planner.config import AgentConfig, PlannerConfig
from planner.engine import EngineLimits, RolloutEngine
from planner.generation import Generated, GenerationBackend, TransformersGeneration
from planner.protocols import Markers, build_protocol
from planner.trajectory import ToolCall, Trajectory

__all__ = ["Agent", "AgentConfig", "EngineLimits", "Generated", "GenerationBackend", "Markers", "PlannerConfig",
           "RolloutEngine", "Solution", "ToolCall", "Trajectory", "TransformersGeneration", "build_protocol"]
