"""Talking to systemd: the notification protocol (sd_notify) and descriptors passed back to a
restarted service (sd_listen_fds), with nothing but the socket module. Both daemons use it.

A service of ``Type=notify`` finds a datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name``
for an abstract one) and sends it newline-separated ``NAME=value`` fields: ``READY=1`` once it
serves, ``STATUS=`` for ``systemctl status``, ``STOPPING=1`` when it shuts down. ``FDSTORE=1``
with descriptors attached (SCM_RIGHTS) has systemd keep them (``FileDescriptorStoreMax=``); the
next process of the service gets them back from descriptor 3 on, described by ``LISTEN_FDS``,
``LISTEN_FDNAMES`` and ``LISTEN_PID``. Outside systemd (no ``NOTIFY_SOCKET``) sending does
nothing, so the daemons call it unconditionally.
"""

from __future__ import annotations

import array
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Protocol


def _twisted_warning(message: str) -> None:
    # Imported here: the agent's root process uses this module and runs no Twisted at all.
    from twisted.logger import Logger

    Logger(namespace="rolecall.notify").warn("{message}", message=message)


#: The first descriptor systemd passes (after stdin, stdout and stderr).
LISTEN_FDS_START = 3
#: The name systemd gives passed descriptors that were stored or configured without one.
UNKNOWN_FD_NAME = "unknown"
#: The kernel takes at most this many descriptors in one message (SCM_MAX_FD).
MAX_FDS_PER_MESSAGE = 253
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
# systemd's rule for descriptor names: printable ASCII without ":" (the LISTEN_FDNAMES separator).
_FD_NAME = re.compile(r"[\x20-\x39\x3b-\x7e]{1,255}")


def format_message(fields: Mapping[str, object]) -> bytes:
    """``NAME=value`` lines, in order; a value may not hold a newline (it would forge a field)."""
    if not fields:
        raise ValueError("a notification needs at least one field")
    lines = []
    for name, value in fields.items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"notification field names are upper case (got {name!r})")
        text = str(value)
        if "\n" in text:
            raise ValueError(f"the value of {name} holds a newline")
        lines.append(f"{name}={text}")
    return "\n".join(lines).encode("utf-8")


def check_fd_name(name: str) -> str:
    """``name`` if systemd accepts it as a descriptor name, else ValueError."""
    if not _FD_NAME.fullmatch(name):
        raise ValueError(
            f"descriptor names are 1 to 255 printable ASCII characters without ':' (got {name!r})"
        )
    return name


class Notifier:
    """Sends notifications to the service manager's socket, or nowhere when there is none.

    A failure to send is logged and reported as False, never raised: a daemon goes on serving
    when systemd cannot be told (it then sees no READY=1 and acts on its own timeout).
    """

    def __init__(self, address: str | None, warn: Callable[[str], None] | None = None) -> None:
        #: The socket's address as the socket module takes it: a path, or "\\0name" (abstract).
        self.address = address
        #: Where a failure to send is said (default: the Twisted log; the agent's root process,
        #: which runs no Twisted, passes its own line writer).
        self._warn = warn or _twisted_warning

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str], warn: Callable[[str], None] | None = None
    ) -> Notifier:
        """The notifier for ``NOTIFY_SOCKET`` in ``environ``; one that sends nothing without it."""
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None, warn)
        if value.startswith("@"):
            return cls("\0" + value[1:], warn)
        if value.startswith("/"):
            return cls(value, warn)
        raise ValueError(
            f"NOTIFY_SOCKET={value!r}: only an absolute path or an @abstract name is supported"
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send ``NAME=value`` fields in one message; True when the manager's socket took it."""
        return self._send(format_message(fields), ())

    def ready(self, status: str | None = None) -> bool:
        """The service serves now (and, optionally, what it is doing)."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """One line for ``systemctl status``."""
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        """The service is shutting down."""
        return self.send(STOPPING=1)

    def store_fds(self, name: str, fds: Sequence[int]) -> bool:
        """Have the manager keep duplicates of ``fds`` under ``name`` until the service's next
        process takes them back (see `listen_fds`); needs ``FileDescriptorStoreMax=``."""
        check_fd_name(name)
        if not fds:
            raise ValueError(f"no descriptors to store under {name!r}")
        payload = format_message({"FDSTORE": 1, "FDNAME": name})
        return all(
            self._send(payload, fds[start : start + MAX_FDS_PER_MESSAGE])
            for start in range(0, len(fds), MAX_FDS_PER_MESSAGE)
        )

    def remove_fds(self, name: str) -> bool:
        """Have the manager close every descriptor it keeps under ``name``."""
        return self.send(FDSTOREREMOVE=1, FDNAME=check_fd_name(name))

    def _send(self, payload: bytes, fds: Sequence[int]) -> bool:
        if self.address is None:
            return False
        ancillary = []
        if fds:
            rights = array.array("i", fds).tobytes()
            ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, rights))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as channel:
                channel.sendmsg([payload], ancillary, 0, self.address)
        except OSError as error:
            address = self.address.replace("\0", "@")
            self._warn(f"cannot notify the service manager at {address}: {error.strerror or error}")
            return False
        return True


def parse_listen_fds(environ: Mapping[str, str], pid: int) -> dict[str, list[int]]:
    """The descriptors systemd passed to process ``pid``, by name, in order; none when
    ``LISTEN_PID`` names another process (the variables were inherited, not meant for us)."""
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return {}
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        raise ValueError(f"LISTEN_FDS={environ['LISTEN_FDS']!r} is not a number") from None
    if count < 0:
        raise ValueError(f"LISTEN_FDS={count} is negative")
    if count == 0:
        return {}
    names_value = environ.get("LISTEN_FDNAMES")
    names = names_value.split(":") if names_value is not None else [UNKNOWN_FD_NAME] * count
    if len(names) != count:
        raise ValueError(f"LISTEN_FDNAMES names {len(names)} descriptors, LISTEN_FDS {count}")
    passed: dict[str, list[int]] = {}
    for offset, name in enumerate(names):
        passed.setdefault(name, []).append(LISTEN_FDS_START + offset)
    return passed


def listen_fds(
    environ: MutableMapping[str, str], *, unset_environment: bool = True
) -> dict[str, list[int]]:
    """Take the descriptors systemd passed to this process: by name, each made close-on-exec;
    the ``LISTEN_*`` variables are removed so that no child process takes them for its own."""
    passed = parse_listen_fds(environ, os.getpid())
    for fds in passed.values():
        for fd in fds:
            os.set_inheritable(fd, False)
    if unset_environment:
        for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            environ.pop(variable, None)
    return passed


class ReadyGate:
    """``READY=1`` once every awaited condition is met, with the daemon's status at that moment.

    Before that, ``STATUS=`` says what is still awaited; after it, each `met` sends the fresh
    status (a condition may be met again, e.g. every applied assignments answer).
    """

    def __init__(self, notifier: Notifier, awaited: Iterable[str], status: Callable[[], str]):
        self._notifier = notifier
        self._awaited = tuple(dict.fromkeys(awaited))
        self._waiting = list(self._awaited)
        self._status = status
        self.ready = False

    def met(self, condition: str) -> None:
        if condition not in self._awaited:
            raise ValueError(f"{condition!r} is not awaited (only {', '.join(self._awaited)})")
        if condition in self._waiting:
            self._waiting.remove(condition)
        if self.ready:
            self._notifier.status(self._status())
        elif not self._waiting:
            self.ready = True
            self._notifier.ready(self._status())
        else:
            self._notifier.status("starting: waiting for " + ", ".join(self._waiting))


class Address(Protocol):
    """What a listening port's ``getHost()`` has."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


def listening_status(listeners: Iterable[tuple[str, Address]]) -> str:
    """``serving API on 127.0.0.1:8773, node API on [::1]:8775`` for the controller's STATUS=."""
    described = [
        f"{label} on [{address.host}]:{address.port}"
        if ":" in address.host
        else f"{label} on {address.host}:{address.port}"
        for label, address in listeners
    ]
    return "serving " + ", ".join(described)


def instances_status(served: int, failed: int) -> str:
    """``serving 3 instances, 1 not served`` for the agent's STATUS=."""
    text = f"serving {served} instance{'' if served == 1 else 's'}"
    if failed:
        text += f", {failed} not served"
    return text
