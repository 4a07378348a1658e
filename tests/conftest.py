"""Session fixtures: the tiny local tokenizer and model that every model test uses (built once)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a locally trained tokenizer and a random tiny Qwen2-shaped model."""
    from training.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-model"))
