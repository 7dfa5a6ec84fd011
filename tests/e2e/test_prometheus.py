"""A real Prometheus server (Debian's package) on loopback scrapes a real controller and a real
agent, loads docs/prometheus/rolecall.rules.yml, and its HTTP API shows RoleCall's series.

The Prometheus process is this test's own: its own configuration, storage directory and loopback
port. It neither needs nor touches a Prometheus system service.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.privileged import serving_python_environment
from tests.e2e.conftest import BIN, Controller
from tests.e2e.test_node_api import enroll

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "rolecall.rules.yml"
NODE = "hv-prom"
AGENT_LISTENING = re.compile(r"agent metrics listening on (http://\S+)")
JOBS = {"rolecall-controller", "rolecall-agent"}
#: The whole wait for Prometheus to scrape both targets and show the series.
DEADLINE_SECONDS = 60
#: What /api/v1/rules says of a rule not evaluated yet.
NEVER = "0001-01-01T00:00:00Z"


@dataclass
class Process:
    """A child process whose merged output is read by a thread into `output`."""

    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, argv: list[str | Path]) -> Process:
        # The agent's serving process runs as nobody, who may not reach a Python under /root.
        environment = {**os.environ, **serving_python_environment()}
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
        )
        started = cls(process)
        threading.Thread(target=started._drain, daemon=True).start()
        return started

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def log(self) -> str:
        return "".join(self.output)

    def wait_for(self, pattern: re.Pattern[str], seconds: float) -> str | None:
        """The first group of the first output line matching `pattern`, waiting up to `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in list(self.output):
                match = pattern.search(line)
                if match:
                    return match.group(1)
            if self.process.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment between us and loopback
    return session


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def host_port(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


@pytest.fixture
def agent(controller: Controller, tmp_path: Path) -> Iterator[tuple[Process, str]]:
    """``rolecall-agent`` for a node with no instance: it needs no namespace, polls the controller
    and serves its metrics. Yields the process and its metrics URL. (Root, as the tests run: the
    agent starts its serving process as another user, here nobody.)"""
    node = enroll(controller, NODE, tmp_path / "node")
    config = tmp_path / "agent.toml"
    # The keys the Vagrant example writes to /etc/rolecall/agent.toml, with a free port.
    config.write_text(
        'user = "nobody"\n'
        "[controller]\n"
        f'urls = ["{controller.node_api_url}"]\n'
        f'certificate = "{node / "node.pem"}"\n'
        f'key = "{node / "node.key"}"\n'
        f'ca_certificate = "{node / "ca.pem"}"\n'
        "[metrics]\n"
        'host = "127.0.0.1"\n'
        "port = 0\n",
        encoding="utf-8",
    )
    running = Process.start(
        [BIN / "rolecall-agent", "--config", config, "--ownership-file", tmp_path / "own.json"]
    )
    try:
        url = running.wait_for(AGENT_LISTENING, 30)
        assert url, "the agent did not start:\n" + running.log()
        yield running, url
    finally:
        code = running.stop()
    assert code == 0, "the agent did not stop cleanly on SIGTERM:\n" + running.log()
    assert "Traceback" not in running.log(), running.log()


def start_prometheus(config: Path, storage: Path) -> tuple[Process, str]:
    """Debian's ``prometheus`` on a free loopback port (another try if the port was taken)."""
    executable = shutil.which("prometheus")
    assert executable, "prometheus is missing: `make install` installs Debian's package"
    for _ in range(3):
        address = f"127.0.0.1:{free_port()}"
        running = Process.start(
            [
                executable,
                f"--config.file={config}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ]
        )
        url = f"http://{address}"
        if wait_until(lambda url=url: ready(url), 30, running):
            return running, url
        running.stop()
        if "address already in use" not in running.log():
            break
    raise AssertionError("prometheus did not start:\n" + running.log())


def ready(url: str) -> bool:
    try:
        return http().get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def wait_until(condition: Callable[[], Any], seconds: float, process: Process) -> Any:
    """`condition()` once it is truthy, or None after `seconds` or once `process` exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.process.poll() is None:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    return None


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector Prometheus answers for `promql` (its `result` list)."""
    response = http().get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def values(url: str, promql: str) -> dict[str, float]:
    """`promql`'s samples by their `job` label."""
    return {
        sample["metric"].get("job", ""): float(sample["value"][1]) for sample in query(url, promql)
    }


def test_prometheus_scrapes_the_controller_and_an_agent_and_loads_the_rules(
    controller: Controller, agent: tuple[Process, str], tmp_path: Path
) -> None:
    _, agent_url = agent
    # A public API call, so that a request counter has a series to show.
    controller.client("iam").list_roles()  # type: ignore[attr-defined]
    shutil.copy(RULES, tmp_path / RULES.name)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML: no quoting surprises in the paths
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [RULES.name],
                "scrape_configs": [
                    {
                        "job_name": "rolecall-controller",
                        "static_configs": [{"targets": [host_port(controller.metrics_url)]}],
                    },
                    {
                        "job_name": "rolecall-agent",
                        "static_configs": [
                            {"targets": [host_port(agent_url)], "labels": {"node": NODE}}
                        ],
                    },
                ],
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    prometheus, url = start_prometheus(config, tmp_path / "data")
    try:

        def scraped() -> dict[str, dict[str, float]] | None:
            seen = {
                "up": values(url, "up"),
                "requests": values(
                    url, 'rolecall_api_requests_total{service="iam",action="ListRoles"}'
                ),
                "instances": values(url, "rolecall_agent_instances"),
                "contact": values(url, f'rolecall_node_last_contact_seconds{{node="{NODE}"}}'),
            }
            return seen if all(seen.values()) and set(seen["up"]) == JOBS else None

        seen = wait_until(scraped, DEADLINE_SECONDS, prometheus)
        assert seen, (
            f"no RoleCall series in Prometheus after {DEADLINE_SECONDS} s; targets: "
            + http().get(f"{url}/api/v1/targets", timeout=5).text
            + "\nprometheus log:\n"
            + prometheus.log()
        )
        assert seen["up"] == {"rolecall-controller": 1.0, "rolecall-agent": 1.0}
        assert seen["requests"]["rolecall-controller"] >= 1
        assert seen["instances"] == {"rolecall-agent": 0.0}
        assert seen["contact"]["rolecall-controller"] >= 0

        def rules_evaluated() -> list[dict[str, Any]] | None:
            groups = http().get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            evaluated = all(rule.get("lastEvaluation", NEVER) != NEVER for rule in rules)
            return rules if rules and evaluated else None

        rules = wait_until(rules_evaluated, DEADLINE_SECONDS, prometheus)
        assert rules, "the rules were not evaluated:\n" + prometheus.log()
        assert {rule["health"] for rule in rules} == {"ok"}, rules
        assert RULES.read_text(encoding="utf-8").count("- alert:") == len(rules)
        # A healthy controller and agent: nothing fires.
        assert [rule["name"] for rule in rules if rule["state"] == "firing"] == []
    finally:
        code = prometheus.stop()
    assert code == 0, "prometheus did not stop cleanly:\n" + prometheus.log()
