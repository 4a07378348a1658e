"""Jobs against each other and against the server: real hostile programs in the real sandbox (issue 42).

Each test runs job code that attacks a sibling job or the server itself, and asserts that only the attacker is
affected: its siblings' results are right, the server was never restarted, and no job chose its own status.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from delegate.executor import Sandbox, SandboxConfig

CONFIG = SandboxConfig(timeout_s=2.0, grace_s=0.5, memory_mb=512, workers=2, max_output_bytes=8192,
                       stop_output_bytes=1 << 20)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(CONFIG) as box:
        yield box


@pytest.fixture(autouse=True)
def server_survives(request):
    """After every test on the shared sandbox: the same server answers and was never restarted."""
    if "sandbox" not in request.fixturenames:
        yield
        return
    sandbox = request.getfixturevalue("sandbox")
    restarts, outer = sandbox.restarts, sandbox.server_pid
    yield
    assert sandbox.run("print(6 * 7)").stdout == "42\n"
    assert sandbox.restarts == restarts and sandbox.server_pid == outer, "a job took the server down"


# A job that scans its own address space for the markers other jobs carry in their code ("MARK-" and 32 hex
# digits) and print ("OUT-" and 64 hex digits, computed at run time, so in no job's code). Its own code holds
# neither pattern, only the regular expressions that find them.
SPY = textwrap.dedent("""
    import re
    pattern = re.compile(rb"(?:MA" rb"RK-[0-9a-f]{32}|OU" rb"T-[0-9a-f]{64})")
    found = set()
    mem = open("/proc/self/mem", "rb", buffering=0)
    for line in open("/proc/self/maps"):
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        if perms[0] != "r" or "[vsyscall]" in line or "[vvar" in line:
            continue
        for offset in range(start, end, 1 << 22):
            try:
                mem.seek(offset)
                chunk = mem.read(min(1 << 22, end - offset) + 100)
            except OSError:
                continue
            found.update(m.decode() for m in pattern.findall(chunk))
    print(sorted(found))
""")


def victim(seconds: float = 0.0) -> tuple[str, set[str]]:
    """A job whose code holds one marker and whose output holds another; returns the code and both markers."""
    mark, seed = f"MARK-{uuid.uuid4().hex}", uuid.uuid4().hex
    out = "OUT-" + hashlib.sha256(seed.encode()).hexdigest()
    code = (f"import hashlib, time\nsecret = {mark!r}\n"
            f"print(('OUT-' + hashlib.sha256({seed!r}.encode()).hexdigest() + ' ') * 20, flush=True)\n"
            f"time.sleep({seconds})\n")
    return code, {mark, out}


def test_a_job_holds_no_earlier_jobs_code_or_output(sandbox):
    """Jobs that ran one after another before it: none of their code or output is in a later job's memory, whose
    process was made after they ran (before: job processes were forks of the server, which had held both)."""
    earlier = [victim() for _ in range(8)]
    for code, _ in earlier:
        assert sandbox.run(code).status == "ok"
    spy = sandbox.run(SPY, 30.0)
    assert spy.status == "ok", (spy.error, spy.stderr)
    leaked = set(eval(spy.stdout)) & set().union(*(markers for _, markers in earlier))
    assert not leaked, leaked


def test_a_job_holds_no_code_or_output_of_jobs_beside_it(sandbox):
    """In one batch: jobs running beside the spy (their output read by the server) and jobs queued behind it
    (their code held by the server): none of it is in the spy's memory (before: it was, in the server's queue and
    buffers that the spy's process was forked with)."""
    running = [victim(3.0) for _ in range(CONFIG.workers)]
    queued = [victim() for _ in range(4)]
    codes = [code for code, _ in running] + [SPY] + [code for code, _ in queued]
    results = sandbox.run_many(codes, 30.0)
    spy = results[len(running)]
    assert spy.status == "ok", (spy.error, spy.stderr)
    leaked = set(eval(spy.stdout)) & set().union(*(markers for _, markers in running + queued))
    assert not leaked, leaked


def report_then_exit(payload: bytes, exit_code: int = 1) -> str:
    """A job that writes `payload` on its report channel (fd 4, as the job runtime does) and exits."""
    return f"import os\nos.write(4, {payload!r})\nos._exit({exit_code})\n"


MALFORMED = {
    "missing keys (timeout)": b'{"timeout": true}',
    "missing keys (memory)": b'{"memory": true}',
    "deep nesting": b"[" * 8000,
    "deep nesting in an object": b'{"summary": ' + b"[" * 8000,
    "wrong types": b'{"type": 7, "summary": 5, "line": {"a": [1]}, "timeout": true}',
    "a list": b'["timeout", "memory"]',
    "an over-long number": b'{"line": ' + b"9" * 6000 + b"}",
    "an infinite number": b'{"line": 1e99999, "summary": "x"}',
    "not UTF-8": b'\xff\xfe{"summary": "\xff"}',
    "a lone surrogate": b'{"type": "ValueError", "summary": "ValueError: \\ud800"}',
    "oversized": b'{"type": "ValueError", "summary": "' + b"x" * 200_000 + b'"}',
    "many reports": b'{"type": "ValueError"}' * 5000,
}


def test_malformed_reports_end_only_their_own_job(sandbox):
    """Every kind of malformed report, in one batch beside ordinary jobs: each reporter is an ordinary failing
    job, each sibling gets its own right answer, and the server goes on (before: a KeyError or RecursionError in
    the server ended it, and every job in flight came back `crashed`)."""
    codes, expected = [], []
    for index, payload in enumerate(MALFORMED.values()):
        codes += [report_then_exit(payload), f"print({index} * 1000)"]
        expected += [None, f"{index * 1000}\n"]
    results = sandbox.run_many(codes)
    for name, result in zip(MALFORMED, results[0::2], strict=True):
        assert result.status == "error", (name, result)
        assert len(result.error or "") < 1000, name
        result.error.encode("utf-8")  # no lone surrogate reaches the caller
    for result, stdout in zip(results[1::2], expected[1::2], strict=True):
        assert result.status == "ok" and result.stdout == stdout, result


def test_forged_report_cannot_claim_a_timeout(sandbox):
    """A job that claims its time ran out, at once: the server's clock says it did not (before: `timeout`)."""
    forged = {"type": "TimeLimitExceeded", "summary": "TimeLimitExceeded: time limit of 2 s exceeded",
              "line": 1, "timeout": True, "memory": False}
    result = sandbox.run(report_then_exit(json.dumps(forged).encode()))
    assert result.status == "error" and result.duration_s < CONFIG.timeout_s, result


def test_forged_report_cannot_claim_memory(sandbox):
    """A job that raised no MemoryError cannot claim one by a flag (before: `memory`)."""
    forged = {"type": "ValueError", "summary": "ValueError: x", "line": 1, "timeout": False, "memory": True}
    result = sandbox.run(report_then_exit(json.dumps(forged).encode()))
    assert result.status == "error", result


def test_forged_report_cannot_turn_a_success_into_a_failure(sandbox):
    """A job that exits 0 is `ok`, whatever it wrote on its report channel (before: `timeout`)."""
    forged = {"type": "TimeLimitExceeded", "summary": "TimeLimitExceeded", "timeout": True, "memory": True}
    result = sandbox.run("print('done')\n" + report_then_exit(json.dumps(forged).encode(), exit_code=0))
    assert result.status == "ok" and result.stdout == "done\n", result


def _syscall_job(calls: dict[str, tuple[int, str]]) -> str:
    lines = ["import ctypes", "libc = ctypes.CDLL(None, use_errno=True)"]
    for name, (number, args) in calls.items():
        lines.append(f"ret = libc.syscall({number}, {args}); print({name!r}, ret, ctypes.get_errno() if ret < 0 "
                     "else 0)")
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="system call numbers of x86_64")
def test_system_calls_outside_the_allowlist_are_refused(sandbox):
    """Newer system calls nobody listed, and memory or per-user pools no limit counts (`memfd_create`, inotify),
    are refused by the filter's default action (before, with a denylist: `mseal`, `memfd_create` and
    `inotify_init1` succeeded and `listmount`/`statmount`/`open_tree_attr` reached the kernel, which answered
    EFAULT)."""
    calls = {"statmount": (457, "0, 0, 0, 0"), "listmount": (458, "0, 0, 0, 0"), "mseal": (462, "0, 0, 0"),
             "open_tree_attr": (467, "-100, 0, 0, 0, 0"), "memfd_secret": (447, "0"),
             "lookup_dcookie": (212, "0, 0, 0"), "kcmp": (312, "0, 0, 0, 0, 0"),
             "memfd_create": (319, 'b"x", 0'), "inotify_init1": (294, "0")}
    result = sandbox.run(_syscall_job(calls))
    assert result.status == "ok", result
    answers = {line.split()[0].strip("'"): line.split()[1:] for line in result.stdout.splitlines()}
    for name in calls:
        assert answers[name][0] == "-1" and int(answers[name][1]) in (errno.ENOSYS, errno.EPERM), (name, answers)


FAMILIES = {"AF_VSOCK": 40, "AF_NETLINK": 16, "AF_PACKET": 17, "AF_ALG": 38, "AF_KEY": 15, "AF_TIPC": 30,
            "AF_RDS": 21, "AF_BLUETOOTH": 31, "AF_CAN": 29, "AF_XDP": 44, "AF_APPLETALK": 5, "AF_X25": 9,
            "AF_NFC": 39, "AF_QIPCRTR": 42, "AF_SMC": 43, "AF_MCTP": 45}


def test_socket_families_are_only_unix_and_inet(sandbox):
    """Every socket family but AF_UNIX, AF_INET and AF_INET6 is refused at `socket()` (before: AF_VSOCK and
    AF_NETLINK sockets opened; AF_VSOCK shares the virtual machine's port space)."""
    code = textwrap.dedent(f"""
        import socket
        for name, family in {FAMILIES!r}.items():
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET):
                try:
                    socket.socket(family, kind).close()
                except OSError as exc:
                    continue
                print("opened", name, kind)
        for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
            socket.socket(family, socket.SOCK_STREAM).close()
        a, b = socket.socketpair()
        a.sendall(b"ping"); print(b.recv(4).decode())
        print("done")
    """)
    result = sandbox.run(code)
    assert result.status == "ok", result
    assert result.stdout == "ping\ndone\n", result.stdout


def test_numpy_sympy_mpmath_run_under_the_allowlist(sandbox):
    """What the coder's programs need still runs: the math stack, files, threads, subprocesses, time."""
    code = textwrap.dedent("""
        import numpy as np, sympy as sp, mpmath, fractions, decimal, statistics, random, itertools, json
        import threading, subprocess, tempfile, os, time, datetime, math
        mpmath.mp.dps = 50
        x = sp.Symbol("x")
        print(sp.factorint(2**64 - 1), sp.solve(x**2 - 2, x), mpmath.sqrt(2))
        print(np.linalg.eigvals(np.array([[2.0, 0.0], [0.0, 3.0]])).tolist(), np.fft.fft(np.ones(4)).real.tolist())
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("7")
        print(open(f.name).read(), os.listdir(".") != [], time.time() > 0, datetime.datetime.now().year > 2000)
        t = threading.Thread(target=lambda: None); t.start(); t.join()
        print(subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout.strip())
        print(random.Random(1).random() < 1, statistics.mean([1, 2, 3]), math.lcm(38, 16))
    """)
    result = sandbox.run(code, 30.0)
    assert result.status == "ok", (result.error, result.stderr)
    assert result.stdout.splitlines()[-1] == "True 2 304"


HOLD_INOTIFY = textwrap.dedent("""
    import ctypes, time
    libc = ctypes.CDLL(None, use_errno=True)
    held = [fd for fd in (libc.inotify_init1(0) for _ in range(200)) if fd >= 0]
    print(len(held), flush=True)
    time.sleep(4)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="starts a host process as the host's `nobody`")
def test_a_job_cannot_starve_host_users_of_a_per_user_pool():
    """A job that grabs every inotify instance it can: a host process of the host's `nobody` can still make one
    (before: the sandbox ran as `nobody` itself, and the job took all 128 of that user's instances)."""
    with Sandbox(CONFIG) as box:
        running = box.start_many([HOLD_INOTIFY], timeout_s=10.0)
        time.sleep(1.5)
        host = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               "import ctypes; print(ctypes.CDLL(None).inotify_init1(0) >= 0)"],
                              capture_output=True, text=True, timeout=30, check=False)
        result = running.results()[0]
    assert result.status == "ok", result
    assert host.stdout.strip() == "True", (host.stdout, host.stderr, result.stdout)
    assert CONFIG.uid != 65534 and CONFIG.gid != 65534


def test_the_callers_environment_does_not_reach_the_jobs(monkeypatch):
    """The caller's PATH and PYTHONPATH (host paths) are not in the environment a job's process was started with
    (before: the server passed both on, and every job could read them in /proc/self/environ)."""
    canary = f"/var/tmp/delegate-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("PYTHONPATH", canary)
    monkeypatch.setenv("PATH", f"{canary}:{os.environ['PATH']}")
    with Sandbox(CONFIG) as box:
        result = box.run("print(open('/proc/self/environ', 'rb').read().decode(errors='replace'))")
    assert result.status == "ok", result
    assert canary not in result.stdout, result.stdout


FORK_BOMB = textwrap.dedent("""
    import os, time
    started = 0
    for _ in range(2000):
        try:
            os.posix_spawn("/bin/sleep", ["sleep", "5"], {})
        except OSError:
            break
        started += 1
    print(started, flush=True)
    time.sleep(3)  # hold them while the sibling forks
""")

SIBLING_FORKS = textwrap.dedent("""
    import os, time
    time.sleep(1.5)  # the bomb holds its processes by now
    pids = [os.posix_spawn("/bin/true", ["true"], {}) for _ in range(20)]
    print(sum(os.waitpid(pid, 0)[1] == 0 for pid in pids))
""")


def test_a_fork_bomb_leaves_its_sibling_able_to_fork(sandbox):
    """A job that starts processes until refused, beside one that then starts 20: the bomb stops at its own
    limit and the sibling starts all of its (before: one limit for the whole sandbox, which the bomb used up)."""
    bomb, sibling = sandbox.run_many([FORK_BOMB, SIBLING_FORKS], 20.0)
    assert bomb.status == "ok" and int(bomb.stdout) < CONFIG.job_processes, bomb
    assert sibling.status == "ok" and sibling.stdout == "20\n", sibling


MEMORY_OUTSIDE_RLIMITS = textwrap.dedent("""
    import fcntl, os, time
    for path in ("/tmp/fill", "/dev/shm/fill"):  # tmpfs pages: no address-space limit counts them
        with open(path, "wb") as file:
            try:
                for _ in range(120):
                    file.write(b"x" * (1 << 20))
            except OSError:
                pass
    pipes = []
    for _ in range(60):  # pipe buffers: kernel memory
        r, w = os.pipe()
        try:  # past the sandbox uid's pipe-user-pages limit the kernel refuses; the buffer stays 64 KiB
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        os.set_blocking(w, False)
        try:
            while True:
                os.write(w, b"x" * 65536)
        except (BlockingIOError, OSError):
            pass
        pipes.append((r, w))
    heap = [b"x" * (1 << 20) for _ in range(450)]  # within the address-space limit on its own
    print("held it all")
    time.sleep(1)
""")


def test_memory_outside_the_address_space_limit_counts_against_the_job(sandbox):
    """A job holding tmpfs files, pipe buffers and heap that each fit their own limit but together pass
    `memory_mb` is stopped as `memory`, and the job beside it runs (before: it held them all, `ok`)."""
    hog, sibling = sandbox.run_many([MEMORY_OUTSIDE_RLIMITS, "import time\ntime.sleep(1)\nprint('fine')"], 30.0)
    assert hog.status == "memory" and "held it all" not in hog.stdout, hog
    assert sibling.status == "ok" and sibling.stdout == "fine\n", sibling
