"""The zygote: the warmed template every job process is forked from, which never holds any job's data.

The server forks it once, after warming up and before it reads the first job, so the zygote's memory holds the
imported math stack and the job setup, and nothing any job sent, printed or reported, now or later: it never
receives code or output. On the server's request (one byte) it forks a job process (`spawn_job`) and hands the
job's ends of its pipes and a pidfd to the server over a Unix socket (`SCM_RIGHTS`), keeping only the pidfd to
reap it; each job then gets its code from the server over its own pipe. When a job exits the zygote reaps it and
sends its wait status. A job process therefore holds, besides the template, only its own code and output.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from . import isolation
from .job import JobSetup, job_main

SPAWN = b"s"
MAX_FDS = 5
MAX_MESSAGE = 4096


@dataclass
class Spawned:
    """A forked job process, seen from its parent: its pid, a pidfd, and the parent's ends of its pipes."""

    pid: int
    pidfd: int
    job_w: int
    out_r: int
    err_r: int
    report_r: int
    workdir: str | None

    @property
    def fds(self) -> list[int]:
        return [self.pidfd, self.job_w, self.out_r, self.err_r, self.report_r]


def spawn_job(setup: JobSetup, namespaced: bool, pidns_fd: int, jobs_dir: str | None) -> Spawned:
    """Fork one job process, already isolating itself and then waiting for its code (`job.job_main`)."""
    job_r, job_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    report_r, report_w = os.pipe()
    workdir = None if namespaced else tempfile.mkdtemp(dir=jobs_dir or None)
    setup = setup if workdir is None else replace(setup, workdir=workdir)
    pid = -1
    try:
        if namespaced:
            isolation.unshare(isolation.CLONE_NEWPID)  # the next child is PID 1 of a new namespace
        pid = os.fork()
        if pid == 0:
            job_main(setup, job_r, out_w, err_w, report_w)
    except OSError:
        for fd in (job_r, job_w, out_r, out_w, err_r, err_w, report_r, report_w):
            os.close(fd)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        if namespaced and pid != 0:
            isolation.setns(pidns_fd, isolation.CLONE_NEWPID)
    for fd in (job_r, out_w, err_w, report_w):
        os.close(fd)
    return Spawned(pid, os.pidfd_open(pid), job_w, out_r, err_r, report_r, workdir)


def start(setup: JobSetup, namespaced: bool, pidns_fd: int, jobs_dir: str | None, cgroups: dict[str, str],
          slot_count: int) -> tuple[int, socket.socket]:
    """Fork the zygote from the (still job-free) server; return its pid and the server's end of its socket.
    `cgroups` maps a controller to the directory of its job slots (`slot-0` ... `slot-<slot_count - 1>`)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = os.getpid()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _zygote_main(theirs, server, setup, namespaced, pidns_fd, jobs_dir, cgroups, slot_count)
    theirs.close()
    ours.setblocking(False)
    return pid, ours


def _zygote_main(sock: socket.socket, server: int, setup: JobSetup, namespaced: bool, pidns_fd: int,
                 jobs_dir: str | None, cgroups: dict[str, str], slot_count: int) -> NoReturn:
    code = 1
    try:
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server:
            os._exit(1)  # the server died before we could tie our life to it
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)  # the caller's channel is the server's alone
        os.dup2(null, 1)
        os.close(null)
        if not namespaced:
            isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)  # catch the jobs' escaped grandchildren
        Zygote(sock, setup, namespaced, pidns_fd, jobs_dir, cgroups, slot_count).serve()
        code = 0
    except BaseException:  # noqa: BLE001 - the zygote never returns into the server's code
        import traceback

        print("delegate sandbox zygote:", traceback.format_exc(), file=sys.stderr, flush=True)
    finally:
        os._exit(code)


class Zygote:
    """The zygote's loop: fork a job per request, reap jobs as they end, report both to the server."""

    def __init__(self, sock: socket.socket, setup: JobSetup, namespaced: bool, pidns_fd: int,
                 jobs_dir: str | None, cgroups: dict[str, str], slot_count: int) -> None:
        self.sock, self.setup, self.namespaced, self.pidns_fd, self.jobs_dir = (sock, setup, namespaced, pidns_fd,
                                                                              jobs_dir)
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, int] = {}  # pid -> pidfd
        self.slots: dict[int, int] = {}  # pid -> its job cgroup slot
        self.free_slots = list(range(slot_count)) if cgroups else []
        self.cgroups = cgroups  # controller -> the directory holding its `slot-<n>` groups

    def serve(self) -> None:
        self.selector.register(self.sock, selectors.EVENT_READ, None)
        try:
            while True:
                for key, _ in self.selector.select():
                    if key.data is None:
                        data = self.sock.recv(MAX_MESSAGE)
                        if not data:
                            return  # the server closed its end: shut down
                        for _ in range(data.count(SPAWN)):
                            self._spawn()
                    else:
                        self._reap(key.data)
        finally:
            for pid, pidfd in list(self.children.items()):
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    def _spawn(self) -> None:
        setup, slot = self.setup, None
        if self.cgroups:
            if not self.free_slots:
                self._send({"fork_failed": "every job cgroup is in use"})
                return
            slot = self.free_slots.pop()
            setup = replace(setup, cgroup_procs=tuple(f"{d}/slot-{slot}/cgroup.procs" for d in self.cgroups.values()))
        try:
            job = spawn_job(setup, self.namespaced, self.pidns_fd, self.jobs_dir)
        except OSError as exc:  # EAGAIN from the process limit while a job holds many processes
            if slot is not None:
                self.free_slots.append(slot)
            self._send({"fork_failed": str(exc)})
            return
        self.children[job.pid] = job.pidfd
        if slot is not None:
            self.slots[job.pid] = slot
        self.selector.register(job.pidfd, selectors.EVENT_READ, job.pid)
        self._send({"spawned": job.pid, "workdir": job.workdir, "slot": slot}, job.fds)
        for fd in job.fds[1:]:  # the server holds them now; the zygote keeps no job's pipe
            os.close(fd)

    def _reap(self, pid: int) -> None:
        pidfd = self.children.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if pid in self.slots:  # its namespace's last processes may still be dying: that slot is used last
            self.free_slots.insert(0, self.slots.pop(pid))
        if not self.namespaced:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the job's session, whatever it left running
            self._kill_orphans()
        self._send({"exited": pid, "status": status})

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode()
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            self.sock.send(data)

    def _kill_orphans(self) -> None:
        """Without PID namespaces, a job's setsid grandchildren are re-parented to us (a subreaper): kill them."""
        me = os.getpid()
        for _ in range(20):
            orphans = [pid for pid in _children(me) if pid not in self.children]
            if not orphans:
                return
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """The zygote's next message and the descriptors it carried; None when none is waiting. EOFError when the
    zygote is gone."""
    try:
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    except BlockingIOError:
        return None
    if not data:
        raise EOFError("the job template process (zygote) exited")
    return json.loads(data), fds


def _children(pid: int) -> list[int]:
    """The children of `pid`: its threads' `children` lists (one read each), else a scan of every process's stat
    (kernels without `CONFIG_PROC_CHILDREN`), which costs a read per process and is slow with a large pool."""
    try:
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    except FileNotFoundError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found
