"""Real hostile programs against the real sandbox: each asserts the status and that the host is unharmed."""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from executor import Sandbox, SandboxConfig
from tests.helpers import alive, descendants, processes_with_cmdline, wait_until

CONFIG = SandboxConfig(timeout_s=2.0, grace_s=0.5, memory_mb=512, workers=2, max_output_bytes=8192,
                       stop_output_bytes=1 << 20)


@pytest.fixture(scope="module")
def sandbox():
    """One sandbox for the whole battery; when it closes, none of its processes may be left."""
    with Sandbox(CONFIG) as box:
        yield box
        processes = descendants(box.server_pid) | {box.server_pid}
    assert wait_until(lambda: not any(alive(pid) for pid in processes)), "sandbox processes left after close"


@pytest.fixture
def visible_dir():
    """A host directory that the sandbox can see (read-only); /tmp is private to each job."""
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="delegate-canary-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def host_unharmed(sandbox):
    """After every hostile program: the same server still answers, nothing restarted, no stray processes."""
    restarts, outer = sandbox.restarts, sandbox.server_pid
    yield
    assert sandbox.run("print(6 * 7)").stdout == "42\n"
    assert sandbox.restarts == restarts and sandbox.server_pid == outer
    # bwrap, the server, and at most `workers` idle plus `workers` busy job processes (each PID 1 of its own).
    assert wait_until(lambda: len(descendants(outer)) <= 3 + 2 * CONFIG.workers), descendants(outer)


def run(sandbox: Sandbox, code: str):
    return sandbox.run(textwrap.dedent(code))


def test_infinite_loop_times_out_with_the_failing_line(sandbox):
    result = run(sandbox, "x = 0\nwhile True:\n    x += 1\n")
    assert result.status == "timeout"
    assert "TimeLimitExceeded" in result.error and ("line 2" in result.error or "line 3" in result.error)


def test_sleep_1000_times_out(sandbox):
    result = run(sandbox, "import time\ntime.sleep(1000)\n")
    assert result.status == "timeout" and result.duration_s < 2.5


def test_huge_power_is_stopped(sandbox):
    result = run(sandbox, "x = 7 ** (10 ** 9)\nprint(x)\n")
    assert result.status in ("timeout", "memory")
    assert result.duration_s < CONFIG.timeout_s + CONFIG.grace_s + 1.0


def test_loop_swallowing_base_exception_is_killed(sandbox):
    result = run(sandbox, """
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
    """)
    assert result.status == "timeout" and "killed" in result.error


def test_ignored_sigalrm_is_killed(sandbox):
    result = run(sandbox, "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n")
    assert result.status == "timeout"


def test_endless_output_is_stopped(sandbox):
    result = run(sandbox, "while True:\n    print('x' * 1000)\n")
    assert result.status == "output_limit"
    assert len(result.stdout.encode()) < 2 * CONFIG.max_output_bytes and "bytes cut" in result.stdout


def test_100mb_single_line_is_cut(sandbox):
    result = run(sandbox, "print('y' * 100_000_000)\n")
    assert result.status == "output_limit"
    assert result.stdout.startswith("yyyy") and "bytes cut" in result.stdout


def test_output_over_the_cap_keeps_head_and_tail(sandbox):
    result = run(sandbox, "print('HEAD')\nprint('.' * 20000)\nprint('TAIL')\n")
    assert result.status == "output_limit"
    assert result.stdout.startswith("HEAD") and result.stdout.rstrip().endswith("TAIL")


def test_non_utf8_output_is_replaced(sandbox):
    result = run(sandbox, "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe done\\n')\n")
    assert result.status == "ok" and result.stdout == "ok \ufffd\ufffd done\n"


def test_memory_bomb_by_list_growth(sandbox):
    result = run(sandbox, "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n")
    assert result.status == "memory" and "MemoryError" in result.error


def test_memory_bomb_by_one_big_allocation(sandbox):
    result = run(sandbox, "block = bytearray(2 * 1024 ** 3)\n")
    assert result.status == "memory"


def test_one_gigabyte_file_write_fails(sandbox):
    result = run(sandbox, """
        with open("big.bin", "wb") as f:
            for _ in range(1024):
                f.write(b"\\0" * 2 ** 20)
    """)
    assert result.status == "error"
    assert "File too large" in result.error or "No space left" in result.error


def test_writes_outside_the_job_directory_fail(sandbox, visible_dir):
    tmp_path = visible_dir
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    result = run(sandbox, f"""
        import os
        try:
            os.remove({str(canary)!r})
        except OSError as exc:
            print("remove:", type(exc).__name__)
        open({str(tmp_path / 'new.txt')!r}, "w").write("pwned")
    """)
    assert result.status == "error" and "Read-only file system" in result.error
    assert canary.read_text() == "alive" and not (tmp_path / "new.txt").exists()


def test_rm_rf_through_the_shell_leaves_the_host_alone(sandbox, visible_dir):
    tmp_path = visible_dir
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    result = run(sandbox, f"import os\nprint(os.system('rm -rf {tmp_path}'))\n")
    assert result.status == "ok" and result.stdout.strip() != "0"
    assert canary.read_text() == "alive"


def test_job_cannot_reach_a_loopback_server_of_the_host(sandbox):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(3.0)
    port = listener.getsockname()[1]
    accepted: list[object] = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(listener)))
    thread.start()
    result = run(sandbox, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n")
    thread.join()
    listener.close()
    assert result.status == "error" and ("refused" in result.error or "unreachable" in result.error)
    assert accepted == [None]


def _accept(listener: socket.socket) -> object:
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return None
    conn.close()
    return "connected"


def test_job_cannot_read_another_process_environment(sandbox, monkeypatch):
    import os

    monkeypatch.setenv("DELEGATE_TEST_SECRET", "s3cr3t-value")
    result = run(sandbox, f"""
        import os
        print(sorted(p for p in os.listdir('/proc') if p.isdigit()))
        print('DELEGATE_TEST_SECRET' in os.environ)
        print(open('/proc/{os.getpid()}/environ', 'rb').read())
    """)
    assert "s3cr3t-value" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[:2] == ["['1']", "False"]
    assert result.status == "error"


def test_fork_bomb_is_contained(sandbox):
    result = run(sandbox, """
        import os, time
        forked = 0
        for _ in range(3000):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(100)
                os._exit(0)
            forked += 1
        print("forked", forked)
        time.sleep(100)
    """)
    assert result.status == "timeout"


def test_setsid_grandchild_is_gone_after_the_job(sandbox):
    marker = "314159.265"
    result = run(sandbox, f"""
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "{marker}"])
            os._exit(0)
        import time
        time.sleep(0.3)
        print("parent done")
    """)
    assert result.status == "ok" and result.stdout == "parent done\n"
    assert wait_until(lambda: not processes_with_cmdline(f"sleep {marker}"), timeout_s=2.0)


def test_subprocess_run_works_inside(sandbox):
    result = run(sandbox, "import subprocess\nprint(subprocess.run(['echo', 'hi'], capture_output=True).stdout)\n")
    assert result.status == "ok" and result.stdout == "b'hi\\n'\n"


def test_multiprocessing_pool_works_inside(sandbox):
    result = run(sandbox, """
        from multiprocessing import Pool
        with Pool(2) as pool:
            print(pool.map(abs, [-1, -2, -3]))
    """)
    assert result.status == "ok" and result.stdout == "[1, 2, 3]\n"


def test_killing_the_parent_does_not_reach_the_server(sandbox):
    result = run(sandbox, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('still here')\n")
    assert result.status == "ok" and result.stdout == "still here\n"  # its parent is outside its namespace


def test_signalling_pid_1_and_everyone_does_not_reach_the_server(sandbox):
    result = run(sandbox, "import os, signal\nfor pid in (1, -1):\n    try:\n        os.kill(pid, signal.SIGTERM)"
                          "\n    except OSError as e:\n        print(type(e).__name__)\nprint('done')\n")
    # PID 1 is the job itself (the kernel drops the signal); -1 finds no other process to signal.
    assert result.status == "ok" and result.stdout == "ProcessLookupError\ndone\n"


def test_threads_left_running_do_not_hold_the_job(sandbox):
    result = run(sandbox, """
        import threading, time
        threading.Thread(target=time.sleep, args=(1000,)).start()
        print("main done")
    """)
    assert result.status == "ok" and result.stdout == "main done\n" and result.duration_s < 1.0


def test_closing_stdout_then_looping_times_out(sandbox):
    result = run(sandbox, "import os\nprint('before')\nos.close(1)\nwhile True:\n    pass\n")
    assert result.status == "timeout" and result.stdout == "before\n"


def test_sys_exit_3_is_an_error_with_its_code(sandbox):
    result = run(sandbox, "import sys\nprint('bye')\nsys.exit(3)\n")
    assert result.status == "error" and result.exit_code == 3 and result.error.startswith("exit code 3")


def test_builtin_exit_is_ok(sandbox):
    result = run(sandbox, "print('a')\nexit()\nprint('b')\n")
    assert result.status == "ok" and result.stdout == "a\n" and result.exit_code == 0


def test_os_exit_0_is_ok(sandbox):
    result = run(sandbox, "import os, sys\nprint('flushed', flush=True)\nos._exit(0)\n")
    assert result.status == "ok" and result.stdout == "flushed\n"


def test_input_reads_end_of_file(sandbox):
    result = run(sandbox, "name = input()\n")
    assert result.status == "error" and result.error.startswith("EOFError")


def test_deep_recursion_is_an_error(sandbox):
    result = run(sandbox, "def f(n):\n    return f(n + 1)\nf(0)\n")
    assert result.status == "error" and result.error.startswith("RecursionError")


def test_segfault_is_a_crash_with_the_signal(sandbox):
    result = run(sandbox, "import ctypes\nctypes.string_at(0)\n")
    assert result.status == "crashed" and result.signal == "SIGSEGV" and "SIGSEGV" in result.error


def test_syntax_error_is_an_error(sandbox):
    result = run(sandbox, "print('unclosed'\n")
    assert result.status == "error" and result.error.startswith("SyntaxError")


def test_big_integer_prints_in_full(sandbox):
    result = run(sandbox, "print(2 ** 20000)\n")  # 6021 digits: past Python's default limit of 4300
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        expected = str(2**20000)
    finally:
        sys.set_int_max_str_digits(limit)
    assert result.status == "ok" and result.stdout.strip() == expected


def test_partial_output_is_kept_on_timeout(sandbox):
    result = run(sandbox, "import time\nfor i in range(3):\n    print('step', i)\ntime.sleep(100)\n")
    assert result.status == "timeout" and result.stdout == "step 0\nstep 1\nstep 2\n"
    assert "line 4" in result.error


def test_host_files_are_read_only(sandbox):
    result = run(sandbox, "open('/etc/hostname', 'a').write('x')\n")
    assert result.status == "error" and "Read-only file system" in result.error


def test_limits_cannot_be_raised(sandbox):
    result = run(sandbox, "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n")
    assert result.status == "error" and result.error.startswith("ValueError")


def test_no_capabilities_left_to_mount(sandbox):
    result = run(sandbox, """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.mount(b"tmpfs", b"/mnt", b"tmpfs", 0, None), ctypes.get_errno())
        print(open("/proc/self/status").read().split("CapEff:")[1].split()[0])
    """)
    assert result.status == "ok"
    mount_ret, cap_eff = result.stdout.split("\n")[:2]
    assert mount_ret.split()[0] == "-1" and int(cap_eff, 16) == 0


def test_each_job_sees_only_itself_and_a_fresh_directory(sandbox):
    first = run(sandbox, "import os\nopen('left.txt', 'w').write('x')\nprint(os.listdir('.'))\n")
    second = run(sandbox, "import os\nprint(os.listdir('.'), os.path.exists('left.txt'), os.getcwd())\n")
    assert first.stdout == "['left.txt']\n" and second.stdout == "[] False /tmp/delegate-job\n"
