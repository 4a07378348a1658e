"""Turns plain-words requests into Python: backends, code extraction, cache. Knows nothing of GRPO."""
