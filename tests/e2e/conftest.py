"""A real controller process for end-to-end tests: ``rolecall-controller init`` then ``serve``."""

from __future__ import annotations

import configparser
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
ACCOUNT_ID = "123456789012"
LISTENING = re.compile(r"public API listening on (http://\S+)")
NODE_API_LISTENING = re.compile(r"node API listening on (https://\S+)")
METRICS_LISTENING = re.compile(r"metrics listening on (http://\S+)")


@dataclass
class Controller:
    url: str
    state_dir: Path
    credentials_file: Path
    access_key_id: str
    secret_access_key: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    node_api_urls: list[str] = field(default_factory=list)
    metrics_urls: list[str] = field(default_factory=list)
    #: Stand-ins for console scripts setup.cfg declares that the virtualenv lacks (see
    #: `missing_console_scripts`); None when every one is installed.
    scripts: Path | None = None

    @property
    def node_api_url(self) -> str:
        """The node API's https URL (logged a moment after the public API's)."""
        return self._logged_url(self.node_api_urls, "the node API")

    @property
    def metrics_url(self) -> str:
        """The http URL of /metrics, /healthz and /readyz (logged after the public API's)."""
        return self._logged_url(self.metrics_urls, "the metrics listener")

    def _logged_url(self, urls: list[str], what: str) -> str:
        deadline = time.monotonic() + 10
        while not urls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert urls, f"{what} did not start:\n" + "".join(self.output)
        return urls[0]

    def client(self, service: str = "iam", **config: object) -> object:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(retries={"max_attempts": 1}, **config),
        )

    def cli_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        env.update(
            AWS_SHARED_CREDENTIALS_FILE=str(self.credentials_file),
            AWS_CONFIG_FILE=str(self.state_dir / "no-such-config"),
            AWS_PROFILE="rolecall",
            AWS_DEFAULT_REGION="us-east-1",
            PATH=os.pathsep.join(
                [*([str(self.scripts)] if self.scripts else []), str(BIN), env.get("PATH", "")]
            ),
        )
        return env


def console_scripts() -> dict[str, str]:
    """setup.cfg's console scripts: name -> ``module:function``."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = config["options.entry_points"]["console_scripts"]
    pairs = (line.split("=", 1) for line in declared.strip().splitlines())
    return {name.strip(): target.strip() for name, target in pairs}


def missing_console_scripts(directory: Path) -> Path | None:
    """Scripts for the console scripts setup.cfg declares but the virtualenv's bin lacks, made
    in ``directory``; None when there are none.

    A checkout whose setup.cfg gained a tool since the virtualenv was installed (a branch's
    worktree sharing another checkout's environment) would otherwise run its tests against
    nothing. Each stand-in runs this interpreter on this checkout's code, as the installed
    script would; `make install` replaces the need for them.
    """
    missing = {
        name: target for name, target in console_scripts().items() if not (BIN / name).exists()
    }
    if not missing:
        return None
    directory.mkdir(exist_ok=True)
    for name, target in missing.items():
        module, function = target.split(":")
        script = directory / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            f"from {module} import {function}\n"
            f"sys.exit({function}())\n"
        )
        script.chmod(0o755)
    return directory


def start_controller(state_dir: Path, config: Path | None = None) -> Controller:
    """``init`` then ``serve`` on free loopback ports, with an optional configuration file (both
    read it: a store on PostgreSQL is initialised there)."""
    init = subprocess.run(
        [
            BIN / "rolecall-controller",
            *(["--config", config] if config is not None else []),
            "--state-dir",
            state_dir,
            "init",
            "--account-id",
            ACCOUNT_ID,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Initialised RoleCall" in init.stdout
    credentials = configparser.ConfigParser()
    credentials.read(state_dir / "root-credentials")
    process = subprocess.Popen(
        [
            BIN / "rolecall-controller",
            *(["--config", config] if config is not None else []),
            "--state-dir",
            state_dir,
            "serve",
            "--port",
            "0",
            "--node-api-port",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, output, node_api_urls, metrics_urls = watch_serving(process)
    return Controller(
        scripts=missing_console_scripts(state_dir.parent / f"{state_dir.name}-scripts"),
        url=url,
        state_dir=state_dir,
        credentials_file=state_dir / "root-credentials",
        access_key_id=credentials["rolecall"]["aws_access_key_id"],
        secret_access_key=credentials["rolecall"]["aws_secret_access_key"],
        process=process,
        output=output,
        node_api_urls=node_api_urls,
        metrics_urls=metrics_urls,
    )


def watch_serving(
    process: subprocess.Popen[str],
) -> tuple[str, list[str], list[str], list[str]]:
    """Read a ``serve`` process's output in a thread until it listens: its public API URL, and
    its output, node API URLs and metrics URLs (lists that grow as it speaks). Kill it and fail
    with its output if it never does (30 s)."""
    output: list[str] = []
    node_api_urls: list[str] = []
    metrics_urls: list[str] = []
    found: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        # A thread, not select(): lines already buffered by Python are invisible to select().
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = LISTENING.search(line)
            if match:
                found.put(match.group(1))
            match = NODE_API_LISTENING.search(line)
            if match:
                node_api_urls.append(match.group(1))
            match = METRICS_LISTENING.search(line)
            if match:
                metrics_urls.append(match.group(1))
        found.put("")

    threading.Thread(target=drain, daemon=True).start()
    try:
        url = found.get(timeout=30)
    except queue.Empty:
        url = ""
    if not url:
        process.kill()
        process.wait()
        raise AssertionError("controller did not start:\n" + "".join(output))
    return url, output, node_api_urls, metrics_urls


def stop_controller(controller: Controller) -> int:
    if controller.process.poll() is None:
        controller.process.send_signal(signal.SIGTERM)
        try:
            controller.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            controller.process.kill()
            controller.process.wait()
    return controller.process.returncode


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    running = start_controller(tmp_path_factory.mktemp("controller"))
    try:
        yield running
    finally:
        code = stop_controller(running)
    assert code == 0, "controller did not stop cleanly on SIGTERM:\n" + "".join(running.output)
    log = "".join(running.output)
    assert running.secret_access_key not in log, "a secret key reached the controller's log"
    assert "Traceback" not in log, "the controller logged a traceback:\n" + log


@pytest.fixture
def iam(controller: Controller) -> object:
    return controller.client("iam")
