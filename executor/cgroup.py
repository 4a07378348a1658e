"""The sandbox's control groups: a ceiling on its processes (`pids`) and on its memory (`memory`), v1 or v2, for
each server, and below it one group per job slot with a job's own ceilings.

One group per server, named afresh at every launch (a restarted server never waits for its predecessor's group
to empty). Below it, made at launch (ahead of need, so that no job waits for a `mkdir`), `slot-0`, `slot-1`, ...:
each job process moves itself into a free slot before it runs anything (the slots' `cgroup.procs` belong to the
sandbox's identity), so that its memory (heap, tmpfs files, pipe and socket buffers, kernel objects) and its
processes are counted and limited on their own, and the OOM killer and the pids limit hit the job that caused
them. Whatever is writable here is used; what is not is reported once by the caller.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
_names = itertools.count()

# The file that bounds each controller, in cgroup v2 and in v1.
_LIMIT_FILES = {"pids": ("pids.max", "pids.max"), "memory": ("memory.max", "memory.limit_in_bytes")}
# Also written where present, so that the memory ceiling cannot be dodged by swapping (best effort).
_NO_SWAP = {"memory.max": ("memory.swap.max", "0"), "memory.limit_in_bytes": ("memory.memsw.limit_in_bytes", None)}


@dataclass
class SandboxCgroup:
    """The directories (one in v2, one per controller in v1) that hold one server and everything it forks."""

    dirs: list[Path] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)  # controller -> the value in force
    slot_dirs: dict[str, Path] = field(default_factory=dict)  # controller -> the group that holds the slots
    slot_missing: dict[str, str] = field(default_factory=dict)  # controller -> why it has no job slots

    @classmethod
    def create(cls, limits: dict[str, int], root: Path = ROOT, slots: int = 0,
               slot_limits: dict[str, int] | None = None,
               owner: tuple[int, int] | None = None) -> tuple[SandboxCgroup, dict[str, str]]:
        """A fresh group with as many of `limits` ({"pids": n, "memory": bytes}) as can be set here, and why
        each of the others cannot; below it `slots` job groups with `slot_limits` (for the controllers named
        there), whose `cgroup.procs` is handed to `owner` (uid, gid) so that the sandbox's jobs can join them."""
        _remove_orphans(root)
        # the random part: a caller killed before it could clean up leaves its groups, and a later caller may get
        # its pid; a name taken would otherwise look like "no writable cgroup" and cost that sandbox its limits
        name = f"delegate-sandbox-{os.getpid()}-{next(_names)}-{secrets.token_hex(4)}"
        group, missing = cls(), {}
        for controller, value in limits.items():
            try:
                path, limit_file = group._limit(root, name, controller, value)
            except OSError as exc:
                missing[controller] = str(exc)
                continue
            if slots and slot_limits and controller in slot_limits:
                try:
                    group._slots(path, controller, limit_file, slots, slot_limits[controller], owner)
                except OSError as exc:  # e.g. v2, whose group with the server in it cannot have controlled children
                    group.slot_dirs.pop(controller, None)
                    group.slot_missing[controller] = f"cannot make per-job {controller} groups in {path}: {exc}"
        return group, missing

    def _slots(self, parent: Path, controller: str, limit_file: str, count: int, value: int,
               owner: tuple[int, int] | None) -> None:
        self.slot_dirs[controller] = parent
        for index in range(count):
            path = parent / f"slot-{index}"
            path.mkdir()
            _write_limit(path, limit_file, value)
            for name in ("cgroup.procs", "tasks"):  # `tasks`: v1 only
                if owner is not None and (path / name).exists():
                    os.chown(path / name, *owner)

    def _limit(self, root: Path, name: str, controller: str, value: int) -> tuple[Path, str]:
        v2_file, v1_file = _LIMIT_FILES[controller]
        for base, limit_file in ((_v2_root(root, controller), v2_file), (root / controller, v1_file)):
            if base is None or not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
                continue
            path = base / name
            if path not in self.dirs:
                path.mkdir()
                self.dirs.append(path)
            _write_limit(path, limit_file, value)
            self.limits[controller] = value
            return path, limit_file
        raise OSError(f"no writable {controller} cgroup (v2 {root} with '{controller}' in cgroup.subtree_control, "
                      f"or v1 {root / controller})")

    def wrap(self, argv: list[str]) -> list[str]:
        """Run argv inside this group: the shell moves itself in (into each v1 hierarchy), then execs argv."""
        if not self.dirs:
            return argv
        moves = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(self.dirs)))
        shift = len(self.dirs)
        return ["/bin/sh", "-c", f'{moves} && shift {shift} && exec "$@"', "sh",
                *(str(d / "cgroup.procs") for d in self.dirs), *argv]

    def remove(self, timeout_s: float = 2.0) -> None:
        """Kill whatever is still inside, then remove the directories (retrying while the processes die)."""
        slots = [slot for parent in self.dirs for slot in sorted(parent.glob("slot-*"))]
        for path in [*slots, *self.dirs]:  # the slots first: a group with children cannot be removed
            deadline = time.monotonic() + timeout_s  # each its own: one slow removal must not starve the rest
            while True:
                _kill_members(path)
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        log.warning("could not remove cgroup %s: %s", path, exc)
                        break
                    time.sleep(0.02)
        self.dirs = []
        self.slot_dirs = {}


def _remove_orphans(root: Path) -> None:
    """Empty groups of callers that died without cleaning up (SIGKILL, a CI timeout): removed, so they do not pile
    up. A group whose caller still lives, or that still holds a process, is left alone."""
    for group in [*root.glob("delegate-sandbox-*"), *root.glob("*/delegate-sandbox-*")]:  # v2, then v1's
        pid = group.name.split("-")[2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        with contextlib.suppress(OSError):
            for slot in group.glob("slot-*"):
                slot.rmdir()
            group.rmdir()


def _write_limit(path: Path, limit_file: str, value: int) -> None:
    (path / limit_file).write_text(str(value))
    extra, extra_value = _NO_SWAP.get(limit_file, (None, None))
    if extra and (path / extra).exists():
        with contextlib.suppress(OSError):
            (path / extra).write_text(extra_value or str(value))


def oom_kills(path: str) -> int:
    """How many processes the OOM killer took in the memory group at `path` (v1 `memory.oom_control`, v2
    `memory.events`), 0 where neither says."""
    for name in ("memory.oom_control", "memory.events"):
        with contextlib.suppress(OSError):
            for line in Path(path, name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


def _kill_members(path: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)


def _v2_root(root: Path, controller: str) -> Path | None:
    """The cgroup v2 directory where `controller` can be used by a child group, if any."""
    for base in (root, root / "unified"):
        control = base / "cgroup.subtree_control"
        with contextlib.suppress(OSError):
            if control.exists() and controller in control.read_text().split():
                return base
    return None


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
