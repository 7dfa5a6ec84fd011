"""An agent restart under a steady stream of guest requests refuses and fails none of them.

Between two agent processes the instance's listening socket is kept by the service manager
(systemd's descriptor store: FDSTORE=1 / LISTEN_FDS). systemd is not PID 1 here, so the test
plays the service manager's part of that protocol itself, with a real datagram socket and real
descriptor passing: `ServiceManager` below. Everything else is real.
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from agent import netns
from tests.netns.harness import BIN, Cloud, LoggedProcess, daemon_env, wait_until

# Runs between fork and the service's program, as systemd does: the stored descriptors become
# 3, 4, … (moved out of the way first, so none is overwritten) and LISTEN_PID names this process.
LAUNCH = (
    "import fcntl, os, sys\n"
    "fds = [int(fd) for fd in sys.argv[1].split(',') if fd]\n"
    "high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in fds]\n"
    "for fd in fds: os.close(fd)\n"
    "for index, fd in enumerate(high): os.dup2(fd, 3 + index); os.close(fd)\n"
    "if fds: os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class ServiceManager:
    """The descriptor-store half of systemd: keeps what a service sends with FDSTORE=1, drops
    it on FDSTOREREMOVE=1, and hands it to the service's next process as LISTEN_FDS."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self.channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.channel.bind(self.address)
        self.channel.settimeout(0.2)
        self.stored: dict[str, list[int]] = {}
        self.ready = threading.Event()
        self._running = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                data, ancillary, _, _ = self.channel.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
            except TimeoutError:
                continue
            except OSError:
                return
            fds: list[int] = []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    passed = array.array("i")
                    passed.frombytes(payload[: len(payload) - len(payload) % passed.itemsize])
                    fds += list(passed)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            name = fields.get("FDNAME", "stored")
            if fields.get("FDSTORE") == "1":
                self.stored.setdefault(name, []).extend(fds)
            elif fields.get("FDSTOREREMOVE") == "1":
                for fd in self.stored.pop(name, []):
                    os.close(fd)
            if fields.get("READY") == "1":
                self.ready.set()

    def spawn(self, argv: list[str], env: dict[str, str]) -> LoggedProcess:
        """The service's next process, with the stored descriptors as LISTEN_FDS."""
        self.ready.clear()
        names = [name for name, fds in self.stored.items() for _ in fds]
        fds = [fd for kept in self.stored.values() for fd in kept]
        env = dict(env, NOTIFY_SOCKET=self.address)
        if fds:
            env.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(names))
        process = LoggedProcess(
            [sys.executable, "-c", LAUNCH, ",".join(map(str, fds)), *argv], env=env, pass_fds=fds
        )
        return process

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        self.channel.close()
        for kept in self.stored.values():
            for fd in kept:
                os.close(fd)
        self.stored.clear()
        os.unlink(self.address)


class Stream:
    """Guest requests for the credentials, one after another from inside the guest, counted."""

    def __init__(self, guest_namespace: str, path: str) -> None:
        self._namespace = guest_namespace
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"
        ).encode()
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.access_key_ids: list[str] = []
        self.secret = "(none served)"
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _once(self) -> None:
        with netns.inside(self._namespace):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with client:
            client.settimeout(15)
            client.connect(("169.254.169.254", 80))
            client.sendall(self._request)
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        if not answer.startswith(b"HTTP/1.1 "):
            raise ConnectionError(f"closed without an answer ({answer[:40]!r})")
        self.statuses.append(int(answer.split(b" ", 2)[1]))
        _head, _, body = answer.partition(b"\r\n\r\n")
        if self.statuses[-1] == 200:
            document = json.loads(body)
            self.access_key_ids.append(document["AccessKeyId"])
            self.secret = document["SecretAccessKey"]

    def _run(self) -> None:
        while self._running:
            try:
                self._once()
            except Exception as error:  # refused, reset, timed out: what the test must not see
                self.errors.append(f"{type(error).__name__}: {error}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._running = False
        self._thread.join(20)


def test_an_agent_restart_refuses_and_fails_no_guest_request(cloud: Cloud, tmp_path: Path) -> None:
    stream, restarted = restart_under_load(cloud, tmp_path, controller_stopped=False)
    assert stream.errors == []
    assert set(stream.statuses) == {200}, sorted(set(stream.statuses))
    assert "took back the listening socket" in restarted


def test_a_restart_while_the_controller_is_down_serves_what_was_kept_at_once(
    cloud: Cloud, tmp_path: Path
) -> None:
    stream, restarted = restart_under_load(cloud, tmp_path, controller_stopped=True)
    assert stream.errors == []
    assert set(stream.statuses) == {200}, sorted(set(stream.statuses))
    # The same set as before the restart, served from what the agent kept, not fetched anew.
    assert len(set(stream.access_key_ids)) == 1, set(stream.access_key_ids)
    assert "serving 1 instance(s) as kept across the restart" in restarted
    assert "kept across the restart)" in restarted  # the credentials line
    assert "SecretAccessKey" not in restarted and stream.secret not in restarted


def restart_under_load(
    cloud: Cloud, tmp_path: Path, controller_stopped: bool
) -> tuple[Stream, str]:
    """A guest asks for its credentials over and over while the agent restarts under a service
    manager (after the controller stopped, if `controller_stopped`): the guest's requests and
    the new agent's output."""
    cloud.agent.stop()  # this test runs its own agent, under a service manager
    manager = ServiceManager(tmp_path / "notify")
    agent = cloud.agent
    argv = [
        str(BIN / "rolecall-agent"), "--config", str(agent.config),
        "--certificate", str(agent.credentials / "node.pem"),
        "--key", str(agent.credentials / "node.key"),
        "--ca-certificate", str(agent.credentials / "ca.pem"),
        "--metrics-port", "0", "--imds-port", "80",
        "--ownership-file", str(agent.ownership_file),
    ]  # fmt: skip
    env = {key: value for key, value in daemon_env().items() if not key.startswith("LISTEN_")}
    processes: list[LoggedProcess] = []
    stream = None
    try:
        name, _ = cloud.profile()
        instance_id = cloud.launch(name)
        cloud.ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="optional")
        processes.append(manager.spawn(argv, env))
        assert manager.ready.wait(30), processes[-1].output
        guest = cloud.guest(instance_id)
        path = f"/latest/meta-data/iam/security-credentials/{name}"
        wait_until(lambda: guest.get(path)[0] == 200, 15, "credentials before the restart")
        assert list(manager.stored) == [f"rc-{instance_id}"], "the socket was not stored"

        stream = Stream(guest.name, path)
        wait_until(lambda: len(stream.statuses) >= 20, 15, "requests before the restart")
        if controller_stopped:
            cloud.controller.stop()
        assert processes[-1].stop() == 0
        during = len(stream.statuses)
        processes.append(manager.spawn(argv, env))
        assert manager.ready.wait(30), processes[-1].output
        wait_until(
            lambda: len(stream.statuses) >= during + 20,
            15,
            f"requests after the restart ({stream.errors[-3:]}):\n{processes[-1].output}",
        )
        stream.stop()
        return stream, processes[-1].output
    finally:
        if stream is not None:
            stream.stop()
        for process in processes:
            process.stop()
        manager.close()
