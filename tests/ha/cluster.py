"""Several ``rolecall-controller serve`` processes on one store, and an agent that lists them all.

Each controller is a real process on its own loopback ports, started from its own state
directory and configuration file; :meth:`Controller.kill` is a SIGKILL, which leaves the
controller no chance to close anything (its sockets are closed by the kernel).
"""

from __future__ import annotations

import configparser
import json
import signal
import subprocess
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.netns.harness import (
    ACCOUNT_ID,
    BIN,
    AgentProcess,
    LoggedProcess,
    daemon_env,
    free_ports,
    scrape,
)

#: A client's deadline for an answer: a controller that hangs shows as a read timeout, never
#: as a test that waits for ever. Well above the seconds a controller may hold a request while
#: its database has no primary (the pool's reconnection and connection timeouts, one request
#: after another: 8 s measured on a loaded machine).
READ_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class RootKey:
    access_key_id: str
    secret_access_key: str


def controller_command(state_dir: Path, config: Path | None, *argv: str | Path) -> list[str]:
    return [
        str(BIN / "rolecall-controller"),
        *(["--config", str(config)] if config is not None else []),
        "--state-dir",
        str(state_dir),
        *map(str, argv),
    ]


def initialise(state_dir: Path, config: Path | None) -> str:
    """``init`` for one controller host; its output."""
    done = subprocess.run(
        controller_command(state_dir, config, "init", "--account-id", ACCOUNT_ID),
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def root_key(state_dir: Path) -> RootKey:
    credentials = configparser.ConfigParser()
    credentials.read(state_dir / "root-credentials")
    section = credentials["rolecall"]
    return RootKey(section["aws_access_key_id"], section["aws_secret_access_key"])


class Controller:
    """One controller process on ports chosen once (a restart comes back at the same URLs)."""

    def __init__(self, name: str, state_dir: Path, config: Path | None, key: RootKey) -> None:
        self.name = name
        self.state_dir = state_dir
        self.config = config
        self.key = key
        self.api_port, self.node_api_port, self.metrics_port = free_ports(3)
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.node_api_url = f"https://127.0.0.1:{self.node_api_port}"
        self.process: LoggedProcess | None = None
        #: (exit status, output) of each process that ended.
        self.ended: list[tuple[int, str]] = []
        #: What ``init`` printed for this host.
        self.init_output = ""

    def start(self) -> None:
        self.spawn()
        self.wait_listening()

    def spawn(self) -> None:
        """Start the process; :meth:`wait_listening` waits for its ports (several controllers
        start side by side: each takes seconds, mostly Python's imports)."""
        assert self.process is None, f"{self.name} runs already"
        self.process = LoggedProcess(
            controller_command(
                self.state_dir, self.config, "serve",
                "--port", str(self.api_port), "--node-api-port", str(self.node_api_port),
                "--metrics-port", str(self.metrics_port),
            ),
            env=daemon_env(),
        )  # fmt: skip

    def wait_listening(self) -> None:
        assert self.process is not None
        self.process.wait_for(r"public API listening on http://")
        self.process.wait_for(r"node API listening on https://")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to its clients or to the database."""
        assert self.process is not None
        self.process.process.send_signal(signal.SIGKILL)
        self.process.process.wait(10)
        self._ended()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self._ended()

    def _ended(self) -> None:
        assert self.process is not None
        self.process.stop()  # collects the output thread
        self.ended.append((self.process.process.returncode, self.process.output))
        self.process = None

    @property
    def output(self) -> str:
        running = [self.process.output] if self.process is not None else []
        return "".join([output for _, output in self.ended] + running)

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.key.access_key_id,
            aws_secret_access_key=self.key.secret_access_key,
            config=Config(
                retries={"max_attempts": 1},
                connect_timeout=5,
                read_timeout=READ_TIMEOUT_SECONDS,
            ),
        )

    def enroll(self, node: str, out: Path) -> Path:
        out.mkdir()
        done = subprocess.run(
            controller_command(self.state_dir, self.config, "enroll-node", node, "--out", out),
            capture_output=True,
            text=True,
            timeout=60,
            env=daemon_env(),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return out

    def metrics(self) -> dict[str, float]:
        return scrape(f"127.0.0.1:{self.metrics_port}")

    def problems(self) -> list[str]:
        """Tracebacks in its output, and unclean exits other than the kills the test made."""
        found = []
        for code, output in self.ended:
            if code not in (0, -signal.SIGKILL):
                found.append(f"{self.name} exited with {code}:\n{output}")
            if "Traceback" in output:
                found.append(f"{self.name} logged a traceback:\n{output}")
        return found


class Agent(AgentProcess):
    """``rolecall-agent`` with every controller's node API URL, tried in the order given."""

    def __init__(self, urls: list[str], credentials: Path, workdir: Path) -> None:
        super().__init__(urls[0], credentials, workdir)
        text = self.config.read_text(encoding="utf-8")
        single = f'urls = ["{urls[0]}"]'
        assert single in text
        self.config.write_text(text.replace(single, f"urls = {json.dumps(urls)}"), "utf-8")


def established_to(port: int) -> int:
    """How many established TCP connections in this network namespace go to 127.0.0.1:`port`
    (the agent's to a controller's node API: nothing else connects there)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and remote == f"0100007F:{port:04X}":
            count += 1
    return count


def write_config(path: Path, dsn: str) -> Path:
    """A controller configuration with its store on PostgreSQL at `dsn` (no password in it:
    that is in the passfile the DSN names)."""
    path.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n', encoding="utf-8")
    return path


def start_controllers(
    workdir: Path, dsn: str | None, names: Sequence[str], cleanup: ExitStack
) -> list[Controller]:
    """Controllers sharing one store, started, each stopped at `cleanup`'s end: on PostgreSQL at
    `dsn` each host has its own state directory, initialised in turn (the first makes the
    account, the key ring and the CA); with no `dsn`, every process serves one SQLite state
    directory. Each starts while the next host is initialised: both take seconds, mostly
    Python's imports."""
    controllers: list[Controller] = []
    for name in names:
        printed = ""
        if dsn is None:
            state_dir, config = workdir / "state", None
            if not controllers:
                printed = initialise(state_dir, None)
        else:
            state_dir, config = workdir / name, write_config(workdir / f"{name}.toml", dsn)
            printed = initialise(state_dir, config)
        key = controllers[0].key if controllers else root_key(state_dir)
        controller = Controller(name, state_dir, config, key)
        controller.init_output = printed
        cleanup.callback(controller.stop)
        controller.spawn()
        controllers.append(controller)
    for controller in controllers:
        controller.wait_listening()
    return controllers
