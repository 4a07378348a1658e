"""The sandbox's contract: results, order, parallel runs, restarts, clean shutdown, missing layers, config."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid

import pytest
from pydantic import ValidationError

from delegate.executor import ExecutionResult, Sandbox, SandboxConfig, SandboxError, isolation
from delegate.executor.sandbox import STALL_MARGIN_S
from tests.conftest import not_applicable
from tests.helpers import alive, descendants, open_fds, processes_with_cmdline, rss_kb, server_python_pid, wait_until

FAST = SandboxConfig(timeout_s=3.0, grace_s=0.5, workers=2)


def test_run_returns_stdout_and_timing():
    with Sandbox(FAST) as sandbox:
        sandbox.start()
        start = time.monotonic()
        result = sandbox.run("print(2**100)")
        waited = time.monotonic() - start
    assert result.status == "ok" and result.stdout == "1267650600228229401496703205376\n"
    assert result.error is None and result.exit_code == 0 and 0 < result.duration_s <= waited  # the job's own time


def test_run_many_keeps_order_when_jobs_finish_out_of_order():
    codes = [f"import time\ntime.sleep({0.05 * (5 - i)})\nprint({i})" for i in range(6)]
    with Sandbox(FAST) as sandbox:
        results = sandbox.run_many(codes)
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]


def test_preloaded_math_stack_is_available():
    code = "import sympy, numpy, mpmath\nx = sympy.Symbol('x')\nprint(sympy.solve(x**2 - 4, x), numpy.int64(3) * 2)"
    with Sandbox(FAST) as sandbox:
        assert sandbox.run(code).stdout == "[-2, 2] 6\n"


def test_render_ok_error_and_silence():
    with Sandbox(FAST) as sandbox:
        ok, error, silent = sandbox.run_many(["print(12)", "print('partial')\n1/0", "x = 1"])
    assert ok.render() == "12"
    assert error.render() == "partial\nZeroDivisionError: division by zero (line 2)"
    assert silent.render() == "no output"


def test_empty_program_is_an_error_not_a_silent_success():
    with Sandbox(FAST) as sandbox:
        empty, blank, real = sandbox.run_many(["", "  \n\t", "print(1)"])
    assert empty.status == blank.status == "error" and empty.render() == "no code to run: the program is empty"
    assert real.stdout == "1\n"


def test_render_clips_long_output_keeping_head_and_tail():
    result = ExecutionResult(status="ok", stdout="A" * 50 + "B" * 5000 + "Z" * 50)
    text = result.render(max_chars=300)
    assert len(text) <= 300 and text.startswith("A" * 50) and text.endswith("Z" * 50) and "cut" in text


def test_result_round_trips_through_a_dict():
    result = ExecutionResult(status="crashed", stderr="x", error="crashed: killed by SIGSEGV", signal="SIGSEGV")
    assert ExecutionResult.from_dict(result.to_dict()) == result


def test_per_call_timeout_overrides_the_config():
    with Sandbox(FAST) as sandbox:
        result = sandbox.run("import time\ntime.sleep(10)", timeout_s=0.5)
    assert result.status == "timeout" and "0.5 s" in result.error


def test_killed_server_reports_jobs_in_flight_as_crashed_and_restarts():
    with Sandbox(FAST) as sandbox:
        sandbox.start()
        server = server_python_pid(sandbox.server_pid)
        killer = _later(0.5, lambda: os.kill(server, signal.SIGKILL))
        results = sandbox.run_many(["import time\ntime.sleep(2)\nprint('never')"] * 2)
        killer.join()
        assert [r.status for r in results] == ["crashed", "crashed"]
        assert "server died" in results[0].error
        assert sandbox.run("print('back')").stdout == "back\n"
        assert sandbox.restarts == 1


def test_close_leaves_no_process_behind():
    sandbox = Sandbox(FAST).start()
    sandbox.run_many(["import time\ntime.sleep(0.2)"] * 2)
    processes = descendants(sandbox.server_pid) | {sandbox.server_pid}
    assert len(processes) >= 4  # bwrap (or sh), the server, and pre-forked job processes
    busy = Sandbox(FAST).start()
    busy_processes = descendants(busy.server_pid) | {busy.server_pid}
    runner = _later(0.0, lambda: busy.run("import os, time\nos.fork()\ntime.sleep(30)"))
    time.sleep(0.5)
    sandbox.close()
    busy.close()
    runner.join()
    assert wait_until(lambda: not any(alive(pid) for pid in processes | busy_processes), timeout_s=5.0)


UNISOLATED = FAST.model_copy(update={"isolation": "none"})


def test_missing_bubblewrap_refuses_to_start_and_says_how_to_fix_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox = Sandbox(FAST)
    with pytest.raises(SandboxError) as refused:
        sandbox.start()
    message = str(refused.value)
    assert "bubblewrap" in message and "apt-get install bubblewrap" in message and "isolation: none" in message
    assert sandbox.server_pids == []  # nothing was started


def test_missing_setpriv_refuses_to_start_as_root(monkeypatch, tmp_path):
    if os.geteuid() != 0:
        not_applicable("only a root caller needs setpriv to drop its identity")
    (tmp_path / "bwrap").symlink_to(shutil.which("bwrap"))
    monkeypatch.setenv("PATH", str(tmp_path))  # bwrap, but no setpriv
    with pytest.raises(SandboxError, match="setpriv"):
        Sandbox(FAST).start()


def _server_started_with(monkeypatch, prelude: str) -> str:
    """Start the real server with `prelude` run first in its interpreter; the marker in its command line."""
    command, env = isolation.server_command()
    assert command[-2:] == ["-m", "executor.server"]
    marker = f"delegate-forced-{uuid.uuid4().hex}"
    code = f"# {marker}\n{prelude}\nimport runpy\nrunpy.run_module('executor.server', run_name='__main__')\n"
    monkeypatch.setattr(isolation, "server_command", lambda: ([*command[:-2], "-c", code], env))
    return marker


def _refused(sandbox: Sandbox, marker: str) -> str:
    """The refusal's message, once nothing of the refused server is left."""
    with pytest.raises(SandboxError) as refused:
        sandbox.start()
    assert sandbox.server_pids == []
    assert wait_until(lambda: not processes_with_cmdline(marker), timeout_s=5.0), processes_with_cmdline(marker)
    return str(refused.value)


def test_a_failed_seccomp_probe_refuses_to_start(monkeypatch):
    """The server cannot build the system-call filter (libseccomp unusable): the sandbox refuses to start, saying
    which layer and why, and a later call refuses again rather than running the code without the filter."""
    marker = _server_started_with(monkeypatch, "import sys\nsys.modules['pyseccomp'] = None")
    sandbox = Sandbox(FAST)
    message = _refused(sandbox, marker)
    assert message.startswith("the sandbox refuses to run without seccomp: seccomp: libseccomp is unusable")
    assert "pip install pyseccomp" in message and "executor.isolation: none" in message
    with pytest.raises(SandboxError, match="refuses to run without seccomp"):
        sandbox.run("print('ran open')")


def test_a_failed_job_namespace_probe_refuses_to_start(monkeypatch):
    """The probe job cannot make its own namespaces (the kernel refuses `unshare`, as in some containers): the
    sandbox refuses to start, naming the per-job namespaces and the seccomp filter that depends on them."""
    marker = _server_started_with(monkeypatch, """
import executor.isolation as iso
real_unshare = iso.unshare
def unshare(flags):
    if flags & iso.CLONE_NEWNS:
        raise OSError(1, "unshare: Operation not permitted (forced by the test)")
    real_unshare(flags)
iso.unshare = unshare
""")
    message = _refused(Sandbox(FAST), marker)
    assert message.startswith("the sandbox refuses to run without job_namespaces, seccomp: job_namespaces: a job "
                              "could not set up its own namespaces: PermissionError: [Errno 1] unshare: Operation not "
                              "permitted (forced by the test); seccomp: jobs could not be set up in namespaces")
    assert message.endswith("executor.isolation: none")


def test_isolation_none_is_an_explicit_loud_opt_in(monkeypatch, caplog):
    monkeypatch.setenv("PATH", "/nonexistent")
    with caplog.at_level(logging.WARNING, logger="delegate.executor.sandbox"), Sandbox(UNISOLATED) as sandbox:
        assert sandbox.run("print(1)").stdout == "1\n"
        assert {"bubblewrap", "job_namespaces", "seccomp"} <= set(sandbox.layers.missing)
    assert any("UNISOLATED" in r.getMessage() for r in caplog.records)


def test_unisolated_still_kills_setsid_grandchildren(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    marker = "271828.182"
    code = f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
    with Sandbox(UNISOLATED) as sandbox:
        assert sandbox.run(code).status == "ok"
        assert wait_until(lambda: not processes_with_cmdline(f"sleep {marker}"), timeout_s=3.0)


def test_unisolated_killed_server_leaves_no_job_directory():
    def job_dirs() -> set[str]:
        return set(glob.glob(os.path.join(tempfile.gettempdir(), "delegate-jobs-*")))

    before = job_dirs()
    with Sandbox(UNISOLATED) as sandbox:
        assert sandbox.run("open('x', 'w').write('1')").status == "ok"
        assert len(job_dirs() - before) == 1
        os.kill(sandbox.server_pid, signal.SIGKILL)
        assert wait_until(lambda: sandbox.run("print(1)").stdout == "1\n", timeout_s=10.0)
        assert sandbox.restarts == 1 and len(job_dirs() - before) == 1  # the new server's only
    assert job_dirs() == before


def test_full_isolation_is_present_here():
    """CI installs bubblewrap and runs as root: every layer must be there (else the hostile tests mean less)."""
    with Sandbox(FAST) as sandbox:
        assert set(sandbox.layers.present) >= {"bubblewrap", "identity", "job_namespaces", "seccomp", "process_limit",
                                               "memory_limit", "job_limits", "rlimits"}, sandbox.layers


def _cgroup_dirs() -> set[str]:
    """This process's sandbox groups (named after its pid: other sandboxes on the machine come and go meanwhile)."""
    return set(glob.glob(f"/sys/fs/cgroup/**/delegate-sandbox-{os.getpid()}-*", recursive=True))


def test_restarted_server_gets_a_fresh_cgroup_with_its_limits_and_close_removes_it():
    before = _cgroup_dirs()
    bomb = "import os, time\nn = 0\ntry:\n    for _ in range(2000):\n        if os.fork() == 0:\n" \
           "            time.sleep(5)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)"
    config = FAST.model_copy(update={"max_processes": 64})
    with Sandbox(config) as sandbox:
        if "process_limit" not in sandbox.layers.present:
            pytest.skip(f"no process limit here: {sandbox.layers.missing}")
        first = _cgroup_dirs() - before
        os.killpg(sandbox.server_pid, signal.SIGKILL)
        assert wait_until(lambda: sandbox.run("print(1)").stdout == "1\n", timeout_s=10.0)
        result = sandbox.run(bomb)  # runs on the restarted server
        assert sandbox.restarts == 1
        assert result.status == "ok" and int(result.stdout) < 64, result
        second = _cgroup_dirs() - before
        assert second and not second & first  # a new name; the old group is gone
    assert wait_until(lambda: _cgroup_dirs() == before, timeout_s=5.0), _cgroup_dirs() - before


def test_the_whole_sandbox_has_a_memory_ceiling():
    """Two jobs, each within its own address-space limit, together above the sandbox's ceiling: the kernel stops
    at least one of them (its oom_score_adj makes a job the victim, not the trainer) and the sandbox goes on."""
    config = FAST.model_copy(update={"memory_mb": 700, "memory_total_mb": 900, "timeout_s": 20.0})
    touch = "import time\nb = bytearray(500 * 2**20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\n" \
            "time.sleep(2)\nprint('survived')"
    with Sandbox(config) as sandbox:
        if "memory_limit" not in sandbox.layers.present:
            pytest.skip(f"no memory limit here: {sandbox.layers.missing}")
        results = sandbox.run_many([touch, touch])
        assert sandbox.run("print(open('/proc/self/oom_score_adj').read())").stdout == "1000\n\n"
        assert sandbox.run("print(1)").stdout == "1\n"
    statuses = [r.status for r in results]
    assert statuses.count("ok") <= 1 and set(statuses) <= {"ok", "crashed", "memory"}, results


def test_a_busy_server_after_a_long_idle_gap_is_not_called_stalled():
    """The stall deadline counts from when the server became busy, not from its last answer before an idle gap."""
    config = SandboxConfig(timeout_s=2.0, grace_s=0.5, workers=1)
    with Sandbox(config) as sandbox:
        assert sandbox.run("print(0)").status == "ok"
        time.sleep(config.timeout_s + config.grace_s + STALL_MARGIN_S + 1.0)
        result = sandbox.run("import time\ntime.sleep(1)\nprint('done')")
        assert result.status == "ok" and result.stdout == "done\n", result
        assert sandbox.restarts == 0


def test_config_rejects_unknown_and_invalid_fields():
    with pytest.raises(ValidationError, match="timeout_seconds"):
        SandboxConfig(timeout_seconds=5)
    with pytest.raises(ValidationError, match="timeout_s"):
        SandboxConfig(timeout_s=-1)


@pytest.mark.slow
def test_stalled_server_is_detected_and_replaced():
    with Sandbox(SandboxConfig(timeout_s=0.5, grace_s=0.2, workers=1)) as sandbox:
        sandbox.start()
        server = server_python_pid(sandbox.server_pid)
        os.kill(server, signal.SIGSTOP)
        result = sandbox.run("print(1)")
        assert result.status == "crashed" and "stopped answering" in result.error
        assert sandbox.run("print(2)").stdout == "2\n" and sandbox.restarts == 1


@pytest.mark.slow
def test_soak_5000_mixed_jobs_keeps_processes_fds_and_memory_flat():
    mixed = ["print(1)", "1/0", "import time\ntime.sleep(5)", "print('x' * 100000)", "import os\nos.fork()",
             "import sympy\nprint(sympy.factorint(2**64 + 1))", "bytearray(10**10)", "import sys\nsys.exit(2)"]
    with Sandbox(SandboxConfig(timeout_s=0.2, grace_s=0.2, max_output_bytes=4096)) as sandbox:
        sandbox.start()
        outer = sandbox.server_pid
        server = server_python_pid(outer)

        def snapshot() -> tuple[int, int, int]:
            """Processes and fds once the pool is idle and refilled (two equal readings in a row)."""
            previous = None
            for _ in range(50):
                current = (len(descendants(outer)), open_fds(server))
                if current == previous:
                    break
                previous = current
                time.sleep(0.1)
            return len(descendants(outer)), open_fds(server), rss_kb(server)

        statuses: dict[str, int] = {}
        for batch in range(50):
            for result in sandbox.run_many([mixed[(batch + i) % len(mixed)] for i in range(100)]):
                statuses[result.status] = statuses.get(result.status, 0) + 1
            if batch == 9:
                early = snapshot()
        late = snapshot()
    assert sum(statuses.values()) == 5000 and set(statuses) >= {"ok", "error", "timeout", "memory", "output_limit"}
    assert late[0] <= early[0] <= 3 + 2 * sandbox.config.workers and late[1] <= early[1], (early, late)
    assert late[2] - early[2] < 20_000, (early, late)  # server RSS grows by less than 20 MB over 4000 jobs


def _later(delay: float, action):
    import threading

    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_start_many_returns_while_the_programs_run():
    codes = ["import time\ntime.sleep(1.0)\nprint('slow')", "print('fast')", ""]
    with Sandbox(FAST) as sandbox:
        running = sandbox.start_many(codes)
        assert not running.futures[0].done()  # handed over, not waited for
        results = running.results()
        assert sandbox.start_many([]).results() == []
    assert [r.stdout for r in results[:2]] == ["slow\n", "fast\n"]
    assert results[2].status == "error" and "empty" in results[2].error


def test_many_workers_hold_more_descriptors_than_a_job_may_open():
    """Each job process costs the server five descriptors; with 40 idle and 40 busy ones the server holds more than
    a job's `open_files`, which a job must apply only after closing what it inherited."""
    config = FAST.model_copy(update={"workers": 40, "servers": 1, "open_files": 64})
    codes = [f"import os\nprint({i}, len(os.listdir('/proc/self/fd')))" for i in range(120)]
    with Sandbox(config) as sandbox:
        results = sandbox.run_many(codes)
    assert [r.status for r in results] == ["ok"] * len(codes), [r.error for r in results if r.status != "ok"][:3]
    assert [int(r.stdout.split()[0]) for r in results] == list(range(len(codes)))
    assert max(int(r.stdout.split()[1]) for r in results) <= 6  # 0-4 and the listing's own descriptor


def test_several_servers_share_the_jobs_and_restart_alone():
    config = FAST.model_copy(update={"workers": 4, "servers": 2})
    with Sandbox(config) as sandbox:
        assert len(set(sandbox.server_pids)) == 2
        results = sandbox.run_many([f"print({i})" for i in range(12)])
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(12)]
        first, second = sandbox.server_pids
        running = sandbox.start_many([f"import time\ntime.sleep(1)\nprint({i})" for i in range(8)])
        os.killpg(first, signal.SIGKILL)  # the jobs it was given crash; the other server's run
        statuses = [r.status for r in running.results()]
        assert statuses[0::2] == ["crashed"] * 4 and statuses[1::2] == ["ok"] * 4
        after = sandbox.run_many([f"print({i})" for i in range(4)])
        assert [r.status for r in after] == ["ok"] * 4
        assert sandbox.restarts == 1 and sandbox.server_pids[1] == second and sandbox.server_pids[0] != first
    with pytest.raises(ValidationError, match="servers"):
        SandboxConfig(workers=2, servers=3)


def test_a_ready_pool_is_forked_while_idle_and_refilled_after_a_burst():
    """`ready` job processes wait, forked and isolated, over both servers; a burst of that many jobs runs on them
    (right results, in order) and the servers fork the pool again once they are idle."""
    config = FAST.model_copy(update={"workers": 2, "servers": 2, "ready": 12})
    assert [config.ready_of(s) for s in (0, 1)] == [6, 6]

    def waiting() -> int:
        return sum(len(descendants(pid)) for pid in sandbox.server_pids)

    with Sandbox(config) as sandbox:
        assert wait_until(lambda: waiting() >= 12, timeout_s=20.0), waiting()
        results = sandbox.run_many([f"import os\nprint({i}, os.getpid() > 0)" for i in range(12)])
        assert [r.stdout for r in results] == [f"{i} True\n" for i in range(12)]
        assert wait_until(lambda: waiting() >= 12, timeout_s=20.0), waiting()
    with Sandbox(FAST) as small:  # without `ready`: `workers` of them, one per worker
        time.sleep(1.0)
        assert sum(len(descendants(pid)) for pid in small.server_pids) < 12
    with pytest.raises(ValidationError, match="max_processes"):
        SandboxConfig(workers=2, ready=300, max_processes=512)
