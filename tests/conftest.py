"""Session fixtures: the tiny local tokenizer and model that every model test uses (built once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("DELEGATE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a locally trained tokenizer and a random tiny Qwen2-shaped model."""
    from delegate.training.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the checkout (`../shared/data`: GSM8K train and test, MATH500)."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"no real data at {SHARED_DATA} (set DELEGATE_SHARED_DATA)")
    return SHARED_DATA
