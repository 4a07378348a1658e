"""Coder configuration: errors name the field, the example recipes load, vLLM is imported only when used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from delegate.coder import CoderConfig, build_coder
from tests.conftest import not_applicable

RECIPES = sorted((Path(__file__).resolve().parent.parent / "training" / "recipes" / "coders").glob("*.yaml"))


def test_unknown_field_is_named():
    with pytest.raises(ValidationError, match="temprature"):
        CoderConfig(temprature=0.0)


def test_field_of_another_backend_is_rejected():
    with pytest.raises(ValidationError, match="base_url do not apply to the 'transformers' backend"):
        CoderConfig(backend="transformers", base_url="http://localhost:8000/v1")
    with pytest.raises(ValidationError, match="batch_size do not apply to the 'openai' backend"):
        CoderConfig(backend="openai", batch_size=8)


@pytest.mark.parametrize("field, value", [("temperature", -0.1), ("top_p", 0.0), ("backend", "tgi"),
                                          ("context", "everything"), ("gpu_memory_utilization", 1.5)])
def test_invalid_values_are_named(field, value):
    overrides = {"backend": "vllm"} if field == "gpu_memory_utilization" else {}
    with pytest.raises(ValidationError, match=field):
        CoderConfig(**{**overrides, field: value})


def test_missing_prompt_file_says_where_it_looked(tiny_model_dir):
    with pytest.raises(FileNotFoundError, match=r"no/such/prompt\.txt"):
        build_coder(CoderConfig(model=str(tiny_model_dir), device="cpu", prompt="no/such/prompt.txt"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_example_recipes_load(recipe):
    config = CoderConfig(**yaml.safe_load(recipe.read_text())["coder"])
    assert "qwen2.5" in config.model.lower() and config.prompt_text().strip()


def test_example_recipes_cover_the_three_ways_to_swap():
    backends = {CoderConfig(**yaml.safe_load(r.read_text())["coder"]).backend for r in RECIPES}
    models = {CoderConfig(**yaml.safe_load(r.read_text())["coder"]).model for r in RECIPES}
    assert backends == {"transformers", "openai", "vllm"}
    assert {"Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-Coder-7B-Instruct"} <= models


def test_vllm_config_validates_without_vllm_installed():
    config = CoderConfig(backend="vllm", model="Qwen/Qwen2.5-7B-Instruct", gpu_memory_utilization=0.5,
                         tensor_parallel_size=2, max_model_len=8192, dtype="bfloat16")
    assert config.tensor_parallel_size == 2


def test_vllm_is_imported_only_when_its_backend_is_built():
    code = ("import sys, coder\nfrom coder import CoderConfig\nimport coder.vllm_backend\n"
            "assert 'vllm' not in sys.modules\n"
            "try:\n    coder.build_coder(CoderConfig(backend='vllm'))\n"
            "except ImportError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if "vllm" in sys.modules or _vllm_installed():
        not_applicable("vLLM is installed here; the missing-package message cannot be shown")
    assert "pip install 'delegate-rl[vllm]'" in done.stdout


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None
