"""Real hostile programs against the real sandbox: each asserts the status and that the host is unharmed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

import delegate.executor as executor
from delegate.executor import Sandbox, SandboxConfig
from tests.helpers import alive, cmdline, descendants, processes_with_cmdline, wait_until

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
def host_dir():
    """A host directory outside the sandbox's allowlist (world-readable, so that only the sandbox hides it)."""
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="delegate-canary-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def visible_dir():
    """A host directory the sandbox shows (read-only): inside the executor package, which every job needs."""
    path = Path(tempfile.mkdtemp(dir=Path(executor.__file__).parent, prefix=".canary-"))
    path.chmod(0o777)
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


# For programs that a limit other than time must stop: time enough for it on two busy shared cores.
ROOMY_S = 30.0


def run(sandbox: Sandbox, code: str, timeout_s: float | None = None):
    return sandbox.run(textwrap.dedent(code), timeout_s)


def test_infinite_loop_times_out_with_the_failing_line(sandbox):
    result = run(sandbox, "x = 0\nwhile True:\n    x += 1\n")
    assert result.status == "timeout"
    assert "TimeLimitExceeded" in result.error and ("line 2" in result.error or "line 3" in result.error)


def test_sleep_1000_times_out(sandbox):
    """Stopped at its deadline, not before it (how long after is the server's to decide: no wall-clock bound)."""
    result = run(sandbox, "import time\ntime.sleep(1000)\n")
    assert result.status == "timeout" and result.error.startswith("TimeLimitExceeded: time limit of 2 s exceeded")
    assert result.duration_s >= CONFIG.timeout_s


def test_huge_power_is_stopped(sandbox):
    result = run(sandbox, "x = 7 ** (10 ** 9)\nprint(x)\n")
    assert result.status in ("timeout", "memory")
    # Computing it takes minutes: a result within a few deadlines shows the job was stopped (a generous ratio, as
    # two shared cores can stretch the kill; the exact deadline is the server's, tested by the statuses above).
    assert result.duration_s < 4 * (CONFIG.timeout_s + CONFIG.grace_s)


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
    result = run(sandbox, "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n", ROOMY_S)
    assert result.status == "memory" and "MemoryError" in result.error


def test_memory_bomb_by_one_big_allocation(sandbox):
    result = run(sandbox, "block = bytearray(2 * 1024 ** 3)\n")
    assert result.status == "memory"


def test_one_gigabyte_file_write_fails(sandbox):
    result = run(sandbox, """
        with open("big.bin", "wb") as f:
            for _ in range(1024):
                f.write(b"\\0" * 2 ** 20)
    """, ROOMY_S)
    assert result.status == "error"
    assert "File too large" in result.error or "No space left" in result.error


@pytest.mark.parametrize("where", ["visible_dir", "host_dir"])
def test_writes_outside_the_job_directory_fail(sandbox, where, request):
    tmp_path = request.getfixturevalue(where)
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
    # A shown directory is read-only; any other is not there at all.
    expected = "Read-only file system" if where == "visible_dir" else "No such file or directory"
    assert result.status == "error" and expected in result.error
    assert canary.read_text() == "alive" and not (tmp_path / "new.txt").exists()


@pytest.mark.parametrize("where", ["visible_dir", "host_dir"])
def test_rm_rf_through_the_shell_leaves_the_host_alone(sandbox, where, request):
    """`rm -rf` of a host directory and of the job's own: rm runs and deletes the job's files (so it did run, with
    the job's rights), but the host directory's canary survives: read-only where the sandbox shows it (rm fails),
    absent where it does not (rm -f has nothing to remove)."""
    tmp_path = request.getfixturevalue(where)
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    result = run(sandbox, f"""
        import os
        os.makedirs("mine/deep")
        open("mine/deep/a.txt", "w").write("x")
        open("top.txt", "w").write("y")
        here = os.getcwd()
        print(sorted(os.listdir(here)))
        print(os.waitstatus_to_exitcode(os.system(f"rm -rf {tmp_path} {{here}}/mine {{here}}/top.txt")))
        print(sorted(os.listdir(here)), os.path.exists({str(canary)!r}))
    """)
    assert result.status == "ok", result.error
    before, rm_status, after = result.stdout.splitlines()
    assert before == "['mine', 'top.txt']" and after.startswith("[] ")  # rm ran: the job's own files are gone
    if where == "visible_dir":  # shown read-only: rm reached the canary and failed on it
        assert rm_status == "1" and after == "[] True" and "Read-only file system" in result.stderr
    else:  # hidden: nothing there to delete
        assert rm_status == "0" and after == "[] False"
    assert canary.read_text() == "alive" and sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]


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


def test_fork_bomb_hits_the_process_limit_and_leaves_nothing_behind(sandbox):
    """A job starts processes until the kernel refuses one (EAGAIN: its own process limit, `job_processes`, well
    before its loop ends), then even `fork` fails inside it. Meanwhile the host still starts processes. When the
    job ends on its own, with its processes still sleeping, none of them is left."""
    outer, marker = sandbox.server_pid, f"1000.{uuid.uuid4().int % 10**9}"  # sleep's argument, unique to this run
    code = textwrap.dedent(f"""
        import errno, os, time
        started = 0
        for _ in range({4 * CONFIG.max_processes}):
            try:
                os.posix_spawn("/bin/sleep", ["sleep", "{marker}"], {{}})  # cheap: no copy of the interpreter
            except OSError as exc:
                print("spawn:", errno.errorcode[exc.errno])
                break
            started += 1
        try:
            os.fork()
            os._exit(0)
        except OSError as exc:
            print("fork:", errno.errorcode[exc.errno])
        print(started, len([p for p in os.listdir("/proc") if p.isdigit()]), flush=True)
        time.sleep(3)  # hold them while the host looks
    """)
    running = sandbox.start_many([code], timeout_s=30.0)
    assert wait_until(lambda: len(processes_with_cmdline(f"sleep {marker}")) > CONFIG.job_processes // 2,
                      timeout_s=20.0)
    sleeping, tree = set(processes_with_cmdline(f"sleep {marker}")), descendants(outer)
    host = subprocess.run(["/bin/echo", "host"], capture_output=True, text=True, timeout=10)
    result = running.results()[0]
    left = wait_until(lambda: not processes_with_cmdline(f"sleep {marker}"), timeout_s=10.0)
    assert left, f"{len(processes_with_cmdline(f'sleep {marker}'))} of the job's processes outlived it"
    assert len(descendants(outer)) <= 3 + 2 * CONFIG.workers
    assert result.status == "ok", result.error
    lines = result.stdout.splitlines()
    assert lines[:2] == ["spawn: EAGAIN", "fork: EAGAIN"], result.stdout
    started, seen = map(int, lines[2].split())
    assert CONFIG.job_processes // 2 < started < CONFIG.job_processes  # the limit stopped it, not the loop's end
    assert seen == started + 1  # the job's own PID namespace: itself and its sleeps
    assert sleeping <= tree and host.stdout == "host\n"  # all in the sandbox's tree; the host still starts one


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
    # A job held by its thread would be killed at the deadline: "timeout", not "ok".
    assert result.status == "ok" and result.stdout == "main done\n" and result.error is None


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


# --- least privilege: what a job must not see, reach or leave behind ----------------------------------------------

def _status_field(pid: int, name: str) -> list[str]:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split()[1:]
    return []


def test_jobs_run_as_an_unprivileged_host_user(sandbox):
    """Seen from the host: the server and a running job hold no privileged uid or gid and no supplementary group."""
    running = sandbox.start_many(["import time\ntime.sleep(1.5)"])
    time.sleep(0.7)
    outer = sandbox.server_pid
    pythons = [pid for pid in descendants(outer) if "executor.server" in cmdline(pid)
               and Path(cmdline(pid).split(" ", 1)[0]).name.startswith("python")]
    owners = {pid: (_status_field(pid, "Uid"), _status_field(pid, "Gid"), _status_field(pid, "Groups"))
              for pid in pythons}
    assert running.results()[0].status == "ok"
    assert len(pythons) >= 2, pythons  # the server and at least the busy job
    expected = str(CONFIG.uid) if os.geteuid() == 0 else str(os.geteuid())
    for uids, gids, groups in owners.values():
        assert set(uids) == {expected} and groups == [], owners
        assert "0" not in gids


def test_planted_secrets_are_out_of_reach(sandbox, host_dir):
    """Secrets where a careless host keeps them: a file in the home directory, a caller-owned 0600 file, the
    project's checkout and data. The job finds none of them, nor the directories that hold them."""
    secret = f"delegate-secret-{uuid.uuid4().hex}"
    home_file = Path.home() / f".delegate-canary-{uuid.uuid4().hex}"
    private_file = host_dir / "token"
    checkout = Path(executor.__file__).resolve().parent.parent
    try:
        for path in (home_file, private_file):
            path.write_text(secret)
            path.chmod(0o600)
        result = run(sandbox, f"""
            import os
            for path in {[str(home_file), str(private_file), "/etc/shadow", str(checkout / "pyproject.toml"),
                          str(checkout / "README.md")]!r}:
                try:
                    print(open(path).read())
                except OSError as exc:
                    print(path, type(exc).__name__)
            print(sorted(os.listdir("/")))
            for path in ("/home", "/var", "/run", "/srv", "/opt", "/mnt", "/work", {str(Path.home())!r},
                         {str(checkout)!r}):
                print(path, os.path.isdir(path) and sorted(os.listdir(path)))
        """)
    finally:
        home_file.unlink(missing_ok=True)
    assert result.status == "ok", result.error
    assert secret not in result.stdout + result.stderr
    assert "root:" not in result.stdout and "[project]" not in result.stdout
    lines = result.stdout.splitlines()
    assert all(line.endswith(("FileNotFoundError", "PermissionError")) for line in lines[:5]), lines[:5]
    top = set(eval(lines[5]))
    assert top <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "tmp",
                   *(Path(p).parts[1] for p in (sys.prefix, sys.base_prefix, str(checkout)))}, top
    shown = dict(line.split(" ", 1) for line in lines[6:])
    for path in ("/home", "/var", "/run", "/srv", "/opt", "/mnt"):
        assert shown[path] == "False", (path, shown[path])
    # What is left of the checkout is the executor package (and a virtual environment inside it, if any).
    assert set(eval(shown[str(checkout)])) <= {"executor", ".venv", "venv"}, shown[str(checkout)]


def test_host_unix_sockets_are_out_of_reach(sandbox, host_dir, visible_dir):
    """A socket in a hidden directory, an abstract one (network namespace), and a root-only socket in a directory
    the sandbox shows (where the mount leaks, the identity holds): none accepts the job's connection."""
    paths = [str(host_dir / "daemon.sock"), str(visible_dir / "daemon.sock")]
    abstract = f"\0delegate-canary-{uuid.uuid4().hex}"
    listeners = []
    try:
        for address in [*paths, abstract]:
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(address)
            listener.listen(4)
            listener.setblocking(False)
            listeners.append(listener)
        Path(paths[1]).chmod(0o600)  # root's, like docker.sock
        result = run(sandbox, f"""
            import socket
            for address in {[*paths, abstract]!r}:
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(address)
                    print("connected")
                except OSError as exc:
                    print(type(exc).__name__)
        """)
        accepted = 0
        for listener in listeners:
            try:
                listener.accept()[0].close()
                accepted += 1
            except BlockingIOError:
                pass
    finally:
        for listener in listeners:
            listener.close()
    assert result.status == "ok" and "connected" not in result.stdout, result.stdout
    assert accepted == 0
    if os.geteuid() == 0:  # the visible socket: refused by its owner's mode, the job not being root on the host
        assert result.stdout.splitlines()[1] == "PermissionError"


def test_sysctls_and_dev_are_read_only(sandbox):
    result = run(sandbox, """
        import os
        for path in ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/hostname", "/proc/sysrq-trigger",
                     "/dev/fill-me", "/dev/null-copy"):
            try:
                with open(path, "w") as f:
                    f.write("|/tmp/pwn")
                print(path, "written")
            except OSError as exc:
                print(path, type(exc).__name__)
        with open("/dev/null", "w") as f:
            f.write("fine")
        print(open("/proc/sys/kernel/ostype").read().strip())
    """)
    assert result.status == "ok" and "written" not in result.stdout, result.stdout
    assert result.stdout.splitlines()[-1] == "Linux"  # reading is fine


def test_dev_shm_is_private_and_bounded(sandbox):
    result = run(sandbox, f"""
        written = 0
        try:
            for i in range({CONFIG.tmpfs_mb // 32 + 2}):  # files under the file-size limit, more than the tmpfs
                with open(f"/dev/shm/fill{{i}}", "wb") as f:
                    for _ in range(32):
                        f.write(b"x" * 2**20)
                        written += 1
        except OSError as exc:
            print(type(exc).__name__, exc.errno)
        print(written)
    """, ROOMY_S)
    assert result.status == "ok", result.error
    assert result.stdout.splitlines()[0] == "OSError 28"  # ENOSPC
    assert int(result.stdout.splitlines()[1]) <= CONFIG.tmpfs_mb


LEAVE = """
import ctypes, os, socket
from multiprocessing import shared_memory
import pyseccomp
libc = ctypes.CDLL(None, use_errno=True)
done = []
for path in ("/dev/left", "/dev/shm/left", "left", "/tmp/left"):
    try:
        open(path, "w").write("x")
        done.append(path)
    except OSError:
        pass
if libc.shmget(0x5EED, 4096, 0o1666) >= 0:  # IPC_CREAT | 0666
    done.append("sysv_shm")
if libc.msgget(0x5EED, 0o1666) >= 0:
    done.append("sysv_msg")
try:
    shared_memory.SharedMemory(name="delegate-left", create=True, size=4096)._mmap = None
    done.append("posix_shm")
except OSError:
    pass
rt = ctypes.CDLL("librt.so.1", use_errno=True)
if rt.mq_open(b"/delegate-left", 0o100 | 0o2, 0o666, None) >= 0:  # O_CREAT | O_RDWR
    done.append("posix_mq")
add_key = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "add_key")
if libc.syscall(add_key, b"user", b"delegate-left", b"x", 1, -3) >= 0:  # KEY_SPEC_SESSION_KEYRING
    done.append("key")
if libc.sethostname(b"pwned", 5) == 0:
    done.append("hostname")
print(done)
"""

FIND = """
import ctypes, os
from multiprocessing import shared_memory
import pyseccomp
libc = ctypes.CDLL(None, use_errno=True)
found = [p for p in ("/dev/left", "/dev/shm/left", "left", "/tmp/left") if os.path.exists(p)]
if libc.shmget(0x5EED, 0, 0) >= 0:
    found.append("sysv_shm")
if libc.msgget(0x5EED, 0) >= 0:
    found.append("sysv_msg")
try:
    shared_memory.SharedMemory(name="delegate-left")
    found.append("posix_shm")
except OSError:
    pass
rt = ctypes.CDLL("librt.so.1", use_errno=True)
if rt.mq_open(b"/delegate-left", 0) >= 0:
    found.append("posix_mq")
request_key = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "request_key")
if libc.syscall(request_key, b"user", b"delegate-left", None, 0) >= 0:
    found.append("key")
if os.uname().nodename != "sandbox":
    found.append("hostname " + os.uname().nodename)
print(found)
"""


def test_a_job_leaves_nothing_for_the_next(sandbox):
    """Files in /dev, /dev/shm, the working directory and /tmp; SysV and POSIX IPC; keys; the hostname: what one
    job leaves (or tries to), the next one does not find. System V IPC and POSIX message queues are outside the
    system-call allowlist, so they are refused at creation already."""
    left = run(sandbox, LEAVE)
    found = run(sandbox, FIND)
    assert left.status == "ok" and found.status == "ok", (left.error, found.error)
    assert {"/dev/shm/left", "left", "/tmp/left", "posix_shm"} <= set(eval(left.stdout))
    assert not {"/dev/left", "key", "hostname", "sysv_shm", "sysv_msg", "posix_mq"} & set(eval(left.stdout))
    assert found.stdout == "[]\n"


def test_the_callers_session_keyring_is_out_of_reach(sandbox):
    """The test plants a key in its own session keyring; the job cannot list, search or read any keyring."""
    import ctypes

    from delegate.executor import syscalls

    libc = ctypes.CDLL(None, use_errno=True)
    secret = f"delegate-secret-{uuid.uuid4().hex}".encode()
    key = libc.syscall(syscalls.number("add_key"), b"user", b"delegate-canary", secret, len(secret), -3)
    assert key > 0, ctypes.get_errno()
    try:
        result = run(sandbox, f"""
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            keyctl = {syscalls.number("keyctl")}
            buf = ctypes.create_string_buffer(4096)
            print(libc.syscall(keyctl, 11, {key}, buf, 4096), ctypes.get_errno())  # KEYCTL_READ the planted key
            print(libc.syscall(keyctl, 11, -3, buf, 4096), ctypes.get_errno())  # the session keyring's contents
            print(buf.raw.rstrip(b"\\0"))
        """)
    finally:
        libc.syscall(syscalls.number("keyctl"), 3, key)  # KEYCTL_REVOKE
    assert result.status == "ok" and secret.decode() not in result.stdout
    assert result.stdout.splitlines()[:2] == ["-1 1", "-1 1"]  # EPERM: the filter


def test_seccomp_denies_the_kernels_riskiest_interfaces(sandbox):
    from delegate.executor import syscalls

    calls = {"io_uring_setup": "1, 0", "ptrace": "0, 0, 0, 0", "bpf": "0, 0, 0", "perf_event_open": "0, 0, -1, -1, 0",
             "userfaultfd": "0", "unshare": f"{syscalls.CLONE_NEWUSER}", "keyctl": "0, -3", "mount": "0, 0, 0, 0, 0",
             "setns": "0, 0", "clone3": "0, 0"}
    code = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n" + "".join(
        f"print({name!r}, libc.syscall({syscalls.number(name)}, {args}), ctypes.get_errno())\n"
        for name, args in calls.items())
    code += "print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])\n"
    code += "import os\nprint('clone', os.fork() if False else os.system('true'))\n"
    result = run(sandbox, code)
    assert result.status == "ok", result.error
    lines = result.stdout.splitlines()
    answers = {line.split()[0].strip("'"): line.split()[1:] for line in lines[: len(calls)]}
    for name in calls:
        expected = ["-1", "38"] if name == "clone3" else ["-1", "1"]  # ENOSYS (the C library falls back), EPERM
        assert answers[name] == expected, (name, answers[name])
    assert lines[len(calls)] == "2"  # filter mode
    assert lines[-1] == "clone 0"  # ordinary processes still start


def test_stdout_set_to_none_is_an_ordinary_program(sandbox):
    result = run(sandbox, "import sys\nsys.stdout = None\nprint(1)\n")
    assert result.status == "ok" and result.stdout == "" and result.error is None
    result = run(sandbox, "import sys\nsys.stderr = None\n1/0\n")
    assert result.status == "error" and "ZeroDivisionError" in result.error
