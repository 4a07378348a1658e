"""GRPO training on TRL: the entry point, rewards, curriculum, data, evaluation, recipes."""
