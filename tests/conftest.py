"""Session fixtures: the tiny local tokenizer and model that every model test uses (built once); and, under CI, no
silent skips.

A test that skips for a missing prerequisite (the real data, a package, a kernel feature such as a writable
cgroup) passes unseen on a user's clone. Under CI (`CI=true`) every such skip FAILS instead, naming what is
missing. Two kinds of skip stay skips there: a `gpu` test on a machine without CUDA, and a test that cannot apply
to this machine by construction (`not_applicable`, e.g. the message shown when a package is absent, on a machine
that has it)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("DELEGATE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
NOT_APPLICABLE = "not applicable here: "


def under_ci() -> bool:
    return os.environ.get("CI") == "true"


def not_applicable(reason: str) -> None:
    """Skip a test that cannot apply to this machine by construction; it stays a skip under CI."""
    __tracebackhide__ = True
    pytest.skip(NOT_APPLICABLE + reason)


@functools.cache
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _allowed_skip(item: pytest.Item, reason: str) -> bool:
    if reason.startswith(NOT_APPLICABLE):
        return True
    return item.get_closest_marker("gpu") is not None and not _cuda()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under `CI=true`, a skipped test (a `skip`/`skipif` mark, `pytest.skip`, `importorskip`, in a fixture or the
    test) is reported as a failure, unless it is a `gpu` test without CUDA or `not_applicable`."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not under_ci():
        return
    reason = _skip_reason(report)
    if _allowed_skip(item, reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"CI=true: a prerequisite of this test is missing, and under CI that is a failure, not a "
                       f"skip: {reason}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a locally trained tokenizer and a random tiny Qwen2-shaped model."""
    from delegate.training.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the checkout (`../shared/data`: GSM8K train and test, MATH500); a skip without it, a
    failure under CI."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"no real data at {SHARED_DATA} (set DELEGATE_SHARED_DATA)")
    return SHARED_DATA
