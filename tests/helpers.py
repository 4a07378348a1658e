"""Process inspection for sandbox tests (read from /proc, as an outside observer)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = children_map(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def server_python_pid(outer_pid: int) -> int:
    """The fork server's interpreter: the outermost Python process at or under the sandbox's outer pid."""
    tree, todo = children_map(), [outer_pid]
    while todo:
        pid = todo.pop(0)
        argv0 = cmdline(pid).split(" ", 1)[0]
        if os.path.basename(argv0).startswith("python") and "executor.server" in cmdline(pid):
            return pid
        todo.extend(tree.get(pid, []))
    raise LookupError("no executor.server process found")


def processes_with_cmdline(text: str) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and text in cmdline(int(e.name))
            and alive(int(e.name))]


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "status").read_text().split("VmRSS:")[1].split()[0])
