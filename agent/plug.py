"""The plug socket: where the hypervisor names each VM's tap (``rolecall-agent plug``,
``unplug`` and ``hook``), and the agent answers whether its metadata service is steered there.

One JSON line asks, one JSON line answers, then the agent closes the connection:
``{"op": "plug"|"unplug", "instance": "i-…", "tap": "vnet0"}`` (``"tap": ""`` in an unplug: whatever
is plugged) → ``{"ok": true, "state": "steered"|"pending"|"unplugged", "namespace": "rc-i-…"}``
or ``{"ok": false, "error": "…"}``. "pending": recorded, steered once the instance's namespace
is prepared (its assignment may come later, as on a live migration's destination).

The root process binds the socket (`bind`, 0600, root's) and hands it to the serving process,
which answers on it (`agent.plugserver`) and forwards each request to the root process (the
broker checks everything again). `decode_request` is pure; `ask` is the client.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.names import InvalidName, InvalidTap, check_instance_id, check_tap

#: The longest request line taken (a request is well under 200 bytes).
MAX_LINE_BYTES = 1024
#: How long the agent waits for a connected client's request.
IDLE_SECONDS = 5.0
#: How long a client waits for the whole exchange (a libvirt hook must never hang).
CLIENT_TIMEOUT_SECONDS = 4.0
OPERATIONS = ("plug", "unplug")


class PlugRefused(ValueError):
    """A request the agent does not take; the message says why."""


class PlugSocketError(Exception):
    """The plug socket cannot be made or reached; the message names it. `unreachable`: no agent
    listens there (no socket, or refused), as opposed to one that failed to answer."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class PlugRequest:
    op: str
    instance_id: str
    #: The tap; "" in an unplug for whichever is plugged.
    tap: str


def decode_request(line: bytes) -> PlugRequest:
    """The request in one line, or PlugRefused saying why."""
    if len(line) > MAX_LINE_BYTES:
        raise PlugRefused(f"request over {MAX_LINE_BYTES} bytes")
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PlugRefused("request is not a JSON line") from None
    if not isinstance(message, dict) or set(message) != {"op", "instance", "tap"}:
        raise PlugRefused('request must be {"op": ..., "instance": ..., "tap": ...}')
    op, instance, tap = message["op"], message["instance"], message["tap"]
    if op not in OPERATIONS:
        raise PlugRefused(f"op must be plug or unplug (got {str(op)[:20]!r})")
    try:
        check_instance_id(instance)
        if not (op == "unplug" and tap == ""):
            check_tap(tap)
    except (InvalidName, InvalidTap) as error:
        raise PlugRefused(str(error)) from None
    return PlugRequest(op, instance, tap)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


# -- the root process: make the socket -----------------------------------------------------------


def bind(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, 0600 and root's (the caller is root), its directory
    made 0755 if missing. A socket file left by a dead agent is replaced; one a live agent
    listens on is not (PlugSocketError: two agents would steal each other's hypervisor)."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(found.st_mode):
                raise PlugSocketError(f"{path} exists and is not a socket; not replacing it")
            if _answers(path):
                raise PlugSocketError(f"another process listens on {path} (another agent?)")
            os.unlink(path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            previous = os.umask(0o177)  # made 0600 from the start, never wider
            try:
                server.bind(str(path))
            finally:
                os.umask(previous)
            os.chmod(path, 0o600)
            server.listen(64)
        except BaseException:
            server.close()
            raise
    except OSError as error:
        raise PlugSocketError(f"cannot make the plug socket {path}: {error}") from error
    return server


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


# -- the hypervisor's side: ask ------------------------------------------------------------------

#: How often a client tries again while the agent's socket is missing or refuses (the agent
#: restarting: its root process binds the socket again within about two seconds).
RETRY_SECONDS = 0.1


def _connected(path: Path, deadline: float, timeout: float) -> socket.socket:
    """A client socket connected to `path`, tried again every RETRY_SECONDS while the socket is
    missing or nothing listens on it, until `deadline`. PlugSocketError saying which, after."""
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        client.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            client.connect(str(path))
            return client
        except FileNotFoundError:
            problem = f"no agent socket at {path} (is rolecall-agent running?)"
        except ConnectionRefusedError:
            problem = f"nothing listens on {path} (is rolecall-agent running?)"
        except PermissionError:
            client.close()
            raise PlugSocketError(f"{path}: permission denied (run as root)") from None
        except TimeoutError:
            client.close()
            raise PlugSocketError(f"the agent did not answer on {path} in {timeout:g} s") from None
        except OSError as error:
            client.close()
            raise PlugSocketError(f"cannot talk to the agent on {path}: {error}") from None
        client.close()
        if time.monotonic() + RETRY_SECONDS >= deadline:
            raise PlugSocketError(f"{problem}; tried for {timeout:g} s", unreachable=True)
        time.sleep(RETRY_SECONDS)


def ask(
    path: Path, op: str, instance_id: str, tap: str, timeout: float = CLIENT_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Send one request to the agent at `path` and return its answer (a dict with "ok"); the
    whole exchange bounded by `timeout`. PlugSocketError when the agent cannot be reached or
    does not answer in time."""
    deadline = time.monotonic() + timeout
    client = _connected(path, deadline, timeout)
    try:
        try:
            client.sendall(encode({"op": op, "instance": instance_id, "tap": tap}))
            received = b""
            while not received.endswith(b"\n") and len(received) <= MAX_LINE_BYTES * 4:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                client.settimeout(left)
                data = client.recv(4096)
                if not data:
                    break
                received += data
        except TimeoutError:
            raise PlugSocketError(f"the agent did not answer on {path} in {timeout:g} s") from None
        except OSError as error:
            raise PlugSocketError(f"cannot talk to the agent on {path}: {error}") from None
    finally:
        client.close()
    try:
        answer = json.loads(received.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PlugSocketError(f"the agent's answer on {path} is not JSON") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise PlugSocketError(f"the agent's answer on {path} is not an answer")
    return answer


# -- while no agent runs: the spool --------------------------------------------------------------

#: The longest spooled request read back (one request line).
MAX_SPOOLED_BYTES = MAX_LINE_BYTES


def spool_directory(socket_path: Path) -> Path:
    """Where requests wait while no agent listens: beside the plug socket, root's (0700)."""
    return socket_path.parent / "plugs.pending"


def spool(socket_path: Path, op: str, instance_id: str, tap: str) -> Path:
    """Keep the request for the agent to take when it starts (`take_spooled`): one file per
    instance, the last request for it replacing the one before (a plug then an unplug made
    while the agent was down leave the unplug). Written whole (a temporary file renamed)."""
    request = decode_request(encode({"op": op, "instance": instance_id, "tap": tap}))
    directory = spool_directory(socket_path)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = directory / request.instance_id
        temporary = directory / f".{request.instance_id}.{os.getpid()}"
        temporary.write_bytes(encode({"op": op, "instance": instance_id, "tap": tap}))
        os.replace(temporary, target)
    except OSError as error:
        raise PlugSocketError(f"cannot keep the request in {directory}: {error}") from error
    return target


def ask_or_spool(
    path: Path, op: str, instance_id: str, tap: str, timeout: float = CLIENT_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """`ask`; when no agent listens at `path` (stopped, or down for longer than `timeout`), the
    request is spooled for the agent to take at its start: {"ok": True, "state": "spooled"}."""
    try:
        return ask(path, op, instance_id, tap, timeout)
    except PlugSocketError as error:
        if not error.unreachable:
            raise
        spool(path, op, instance_id, tap)
        return {"ok": True, "state": "spooled", "why": str(error)}


def take_spooled(socket_path: Path) -> tuple[list[PlugRequest], list[str]]:
    """The requests spooled while no agent ran, oldest first, each file removed as it is read;
    and one line for each file that was no request (removed too)."""
    directory = spool_directory(socket_path)
    try:
        entries = [entry for entry in os.scandir(directory) if not entry.name.startswith(".")]
    except FileNotFoundError:
        return [], []
    except OSError as error:
        return [], [f"cannot read {directory}: {error}"]
    requests: list[PlugRequest] = []
    problems: list[str] = []
    for entry in sorted(entries, key=lambda each: each.stat(follow_symlinks=False).st_mtime_ns):
        try:
            descriptor = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                text = os.read(descriptor, MAX_SPOOLED_BYTES + 1)
            finally:
                os.close(descriptor)
            request = decode_request(text.rstrip(b"\n"))
            if request.instance_id != entry.name:
                raise PlugRefused(f"it names {request.instance_id}")
            requests.append(request)
        except (OSError, PlugRefused) as error:
            problems.append(f"ignored spooled request {entry.path}: {error}")
        finally:
            try:
                os.unlink(entry.path)
            except OSError:
                pass
    return requests, problems
