"""The system calls a job may not make: a seccomp filter, built once in the server and loaded by every job at the
end of its setup (its namespaces and mounts are made by then).

libseccomp through `pyseccomp` (API-compatible with libseccomp's own Python bindings, which are not on PyPI):
libseccomp knows every architecture's syscall numbers and emits a filter that kills any call made through another
architecture's ABI (x32, the 32-bit `int 0x80` path), so a job cannot dodge the list by switching ABI.
"""

from __future__ import annotations

import ctypes
import errno
import tempfile
from typing import Any

from . import isolation

CLONE_NEWUSER = 0x10000000

DENIED = (
    # the keyrings: the caller's session keyring and anything a job could leave for the next one
    "keyctl", "add_key", "request_key",
    # new namespaces (a user namespace gives back every capability), mounts
    "unshare", "setns", "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount",
    "fsconfig", "fspick", "mount_setattr",
    # other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev",
    # kernel interfaces that maths never needs and that carry most of the kernel's recent local exploits
    "bpf", "perf_event_open", "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
    "open_by_handle_at", "name_to_handle_at", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "acct", "swapon", "swapoff", "reboot", "syslog", "quotactl",
)


def missing() -> str | None:
    """None if a filter can be built here, else what to install."""
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: the module loads libseccomp.so.2 at import
        return f"libseccomp is unusable ({exc}): pip install pyseccomp; apt-get install libseccomp2"
    return None


def build() -> Any:
    """The job filter (a `pyseccomp.SyscallFilter`): everything allowed but `DENIED` (EPERM), `clone` with
    CLONE_NEWUSER (EPERM), and `clone3` (ENOSYS, whose flags a filter cannot read; the C library then falls back
    to `clone`)."""
    import pyseccomp as sc

    denied = sc.ERRNO(errno.EPERM)
    rules = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in DENIED:
        try:
            rules.add_rule(denied, name)
        except (OSError, ValueError):
            pass  # not a system call of this architecture (or unknown to this libseccomp): nothing to deny
    rules.add_rule(denied, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return rules


def compile_filter(rules: Any) -> bytes:
    """The filter as the kernel's BPF program (libseccomp's own export), compiled once in the server."""
    with tempfile.TemporaryFile() as file:
        rules.export_bpf(file)
        file.seek(0)
        return file.read()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def install(program: bytes) -> None:
    """Load a compiled filter into this process (no_new_privs must be set). libseccomp's `load()` would compile
    the rules again in every job (bench/NOTES.md); the kernel takes the same program from a buffer."""
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    isolation.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog))


def number(name: str) -> int:
    """The native system call number of `name` (for tests and for calls the C library does not wrap)."""
    import pyseccomp as sc

    return sc.resolve_syscall(sc.Arch.NATIVE, name)
