"""The `openai` coder backend against a real OpenAI-compatible server (`transformers serve`, tiny local model)."""

from __future__ import annotations

import threading
import time

import pytest

from delegate.coder import CoderConfig, build_coder
from tests.helpers import wait_until
from tests.servers import SilentServer, TransformersServer, free_port

REQUESTS = ["the least common multiple of 38 and 16", "2 to the power 100", "the sum of 1 to 100",
            "the square root of 2 to 30 digits"]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    server = TransformersServer(tiny_model_dir, tmp_path_factory.mktemp("serve")).wait_ready()
    yield server
    server.stop()


def openai_config(base_url: str, model: str, **overrides) -> CoderConfig:
    fields = {"backend": "openai", "base_url": base_url, "model": model, "max_new_tokens": 12, "timeout_s": 30.0,
              "retries": 1, "cache_size": 0}
    return CoderConfig(**{**fields, **overrides})


def test_replies_match_local_generation_of_the_same_model(server, tiny_model_dir):
    """Greedy decoding of the same model and prompt: the server's replies equal the local backend's."""
    local_config = CoderConfig(model=str(tiny_model_dir), device="cpu", max_new_tokens=12, cache_size=0)
    with build_coder(openai_config(server.base_url, str(tiny_model_dir), concurrency=4)) as remote, \
            build_coder(local_config) as local:
        remote_replies = [p.reply for p in remote.write_programs(REQUESTS)]
        local_replies = [p.reply for p in local.write_programs(REQUESTS)]
    assert remote_replies == local_replies
    assert len(set(remote_replies)) > 1


def test_concurrent_requests_keep_their_order(server, tiny_model_dir):
    with build_coder(openai_config(server.base_url, str(tiny_model_dir), concurrency=8)) as coder:
        together = [p.reply for p in coder.write_programs(REQUESTS * 2)]
        alone = [coder.write_programs([request])[0].reply for request in REQUESTS]
    assert together == alone * 2


def test_cache_spares_the_server(server, tiny_model_dir):
    with build_coder(openai_config(server.base_url, str(tiny_model_dir), cache_size=64)) as coder:
        coder.write(REQUESTS)
        coder.write(REQUESTS + REQUESTS[:1])
    assert coder.stats.generated == len(REQUESTS) and coder.stats.cache_hits == len(REQUESTS) + 1


def test_wrong_model_name_is_a_per_request_failure(server):
    with build_coder(openai_config(server.base_url, "no-such-model")) as coder:
        programs = coder.write_programs(REQUESTS[:2])
    assert all(p.failure is not None and p.failure.startswith("backend: HTTP 400") for p in programs)
    assert "no-such-model" in programs[0].failure
    assert programs[0].code.startswith("raise RuntimeError(") and "coder failed: HTTP 400" in programs[0].code


def test_slow_server_timeout_is_honoured():
    """Each request waits out its timeout on each of its two attempts (counted where they arrive), then fails."""
    with SilentServer() as silent, build_coder(openai_config(silent.base_url, "tiny", timeout_s=0.5, retries=1,
                                                             concurrency=2)) as coder:
        start = time.monotonic()
        programs = coder.write_programs(REQUESTS[:2])
        elapsed = time.monotonic() - start
        assert wait_until(lambda: len(silent.accepted) >= 4, timeout_s=2.0)
        assert len(silent.accepted) == 2 * 2  # two requests, two attempts each, each on its own connection
    assert all("timed out after 0.5 s (2 attempts)" in p.failure for p in programs)
    assert elapsed >= 2 * 0.5  # both attempts waited their timeout (a lower bound: no flake on a busy machine)


def test_many_requests_to_a_hung_server_wait_one_timeout_not_one_each():
    """A server that accepts and never answers: the call's first requests time out; the rest are not sent."""
    with SilentServer() as silent, build_coder(openai_config(silent.base_url, "tiny", timeout_s=0.5, retries=1,
                                                             concurrency=2)) as coder:
        programs = coder.write_programs([f"the value {i}" for i in range(16)])
        wait_until(lambda: len(silent.accepted) > 2 * 2, timeout_s=1.0)  # any late connection shows up by now
        connections = len(silent.accepted)
    assert all(p.failure for p in programs)
    sent = [p for p in programs if "not sent" not in p.failure]
    assert 1 <= len(sent) <= 2 and all("timed out after 0.5 s" in p.failure for p in sent)
    assert all("not sent: timed out" in p.failure for p in programs if p not in sent)
    # Counted at the server, not timed: the sent requests' two attempts each, where 8 rounds of two used to wait
    # 8 times over (16 requests, 32 connections).
    assert connections == 2 * len(sent)


def test_nothing_listening_fails_fast_and_clearly():
    config = openai_config(f"http://127.0.0.1:{free_port()}/v1", "tiny", retries=2, timeout_s=5.0)
    with build_coder(config) as coder:
        start = time.monotonic()
        programs = coder.write_programs(REQUESTS[:3])
        elapsed = time.monotonic() - start
    assert all("cannot reach" in p.failure and "(3 attempts)" in p.failure for p in programs)
    assert elapsed < 15.0 and coder.stats.failures == 3


def test_server_killed_mid_run_fails_each_request_after_retries(tiny_model_dir, tmp_path):
    server = TransformersServer(tiny_model_dir, tmp_path).wait_ready()
    config = openai_config(server.base_url, str(tiny_model_dir), max_new_tokens=200, timeout_s=20.0, retries=2,
                           concurrency=2)
    requests = [f"request number {i}" for i in range(80)]
    try:
        with build_coder(config) as coder:
            start = time.monotonic()
            coder.write_programs(["a warm-up request"])
            one = time.monotonic() - start  # kill after about 3 of the 40 answers each connection would give
            killer = threading.Timer(3 * one, server.kill)
            killer.start()
            start = time.monotonic()
            programs = coder.write_programs(requests)
            elapsed = time.monotonic() - start
            killer.join()
            after = coder.write_programs(["one more"])[0]
    finally:
        server.stop()
    failed = [p for p in programs if p.failure is not None and p.failure.startswith("backend: ")]
    answered = [p for p in programs if p.reply]
    assert failed and answered and len(failed) + len(answered) == len(requests)  # the kill fell mid-run
    assert all(p.code.startswith("raise RuntimeError(") and "coder failed: " in p.code for p in failed)
    assert any("cannot reach" in p.failure and "(3 attempts)" in p.failure for p in failed)
    assert elapsed < 20.0  # the rest of the call fails at once instead of retrying request by request
    assert after.failure is not None and "cannot reach" in after.failure  # a new call tries again, and says so


def test_one_deadline_bounds_a_whole_call():
    """A hung server and attempts longer than the call may take: the call ends at its deadline, every request an
    error (in flight: no answer; queued: not sent), and the coder goes on answering the next call."""
    config = openai_config(f"http://127.0.0.1:{free_port()}/v1", "tiny", timeout_s=30.0, retries=0, concurrency=2)
    with SilentServer() as silent, build_coder(config.model_copy(update={
            "base_url": silent.base_url, "call_timeout_s": 1.5})) as coder:
        start = time.monotonic()
        programs = coder.write_programs([f"the value {i}" for i in range(12)])
        elapsed = time.monotonic() - start
    # Ended by the call's deadline, not by the attempts' 30 s timeout (a ratio to it, with room for a busy machine).
    assert 1.5 <= elapsed < config.timeout_s / 3, elapsed
    assert all("deadline of 1.5 s passed" in p.failure for p in programs), [p.failure for p in programs]
    assert sum("no answer" in p.failure for p in programs) == 2  # the two in flight
