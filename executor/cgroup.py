"""The sandbox's control group: a ceiling on its processes (`pids`) and on its memory (`memory`), v1 or v2.

One group per server, named afresh at every launch (a restarted server never waits for its predecessor's group
to empty). Whatever is writable here is used; what is not is reported once by the caller.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
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

    @classmethod
    def create(cls, limits: dict[str, int], root: Path = ROOT) -> tuple[SandboxCgroup, dict[str, str]]:
        """A fresh group with as many of `limits` ({"pids": n, "memory": bytes}) as can be set here, and why
        each of the others cannot."""
        name = f"delegate-sandbox-{os.getpid()}-{next(_names)}"
        group, missing = cls(), {}
        for controller, value in limits.items():
            try:
                group._limit(root, name, controller, value)
            except OSError as exc:
                missing[controller] = str(exc)
        return group, missing

    def _limit(self, root: Path, name: str, controller: str, value: int) -> None:
        v2_file, v1_file = _LIMIT_FILES[controller]
        for base, limit_file in ((_v2_root(root, controller), v2_file), (root / controller, v1_file)):
            if base is None or not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
                continue
            path = base / name
            if path not in self.dirs:
                path.mkdir()
                self.dirs.append(path)
            (path / limit_file).write_text(str(value))
            extra, extra_value = _NO_SWAP.get(limit_file, (None, None))
            if extra and (path / extra).exists():
                with contextlib.suppress(OSError):
                    (path / extra).write_text(extra_value or str(value))
            self.limits[controller] = value
            return
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
        deadline = time.monotonic() + timeout_s
        for path in self.dirs:
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
