"""Tool protocols, the token-in/token-out rollout engine, Trajectory and Agent. Knows nothing of TRL."""
