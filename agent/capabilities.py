"""Linux capabilities and the few prctl(2) calls the agent's two processes use to give up
privileges, with nothing but ctypes (the standard library has none of them).

`become_unprivileged` is what the privileged process runs in its child between fork and exec
(see `agent.privileged`); `keep_only` is what it applies to itself once the child runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterable
from pathlib import Path

CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21

_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _prctl(option: int, argument: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, argument, 0, 0, 0), what)


def last_capability() -> int:
    """The highest capability number this kernel knows."""
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def set_capabilities(capabilities: Iterable[int]) -> None:
    """Make the effective and permitted sets exactly `capabilities` (a subset of what is
    permitted now) and the inheritable set empty."""
    mask = 0
    for capability in capabilities:
        mask |= 1 << capability
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for index in range(2):
        word = (mask >> (32 * index)) & 0xFFFFFFFF
        data[index].effective = data[index].permitted = word
        data[index].inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def drop_bounding_set(keep: Iterable[int], last: int) -> None:
    """Remove every capability but `keep` from the bounding set (needs CAP_SETPCAP)."""
    kept = set(keep)
    for capability in range(last + 1):
        if capability not in kept:
            _prctl(_PR_CAPBSET_DROP, capability, f"dropping capability {capability}")


def keep_only(capabilities: Iterable[int]) -> None:
    """This process keeps `capabilities` and can never regain any other: bounding set,
    ambient set, effective, permitted and inheritable sets all cut to them (or to nothing)."""
    kept = set(capabilities)
    drop_bounding_set(kept, last_capability())
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing the ambient set")
    set_capabilities(kept)


def become_unprivileged(uid: int, gid: int, last: int, parent: int) -> None:
    """Between fork and exec, as root: drop every capability from the bounding and ambient sets,
    take on `uid` and `gid` with no supplementary groups (which clears the effective and
    permitted sets), clear the inheritable set, forbid gaining privileges by exec, and die with
    the parent. Raises (and the exec does not happen) if any step fails."""
    drop_bounding_set((), last)
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing the ambient set")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    set_capabilities(())
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    # After the change of user: a change of credentials resets the parent-death signal.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, "parent-death signal")
    if os.getppid() != parent:  # the parent died before that
        os._exit(1)


def process_capabilities(pid: int | str = "self") -> dict[str, int]:
    """CapInh, CapPrm, CapEff, CapBnd and CapAmb of a process, from /proc/PID/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            found[key] = int(value.strip(), 16)
    return found
