"""A real agent given the CA of another controller: one line naming the CA file, once, and the
same on /readyz; a real controller, and the agent's two processes."""

from __future__ import annotations

import http.client
import re
import shutil
import time
from pathlib import Path

from tests.netns import harness

#: How long the agent is watched retrying (the issue saw 18 lines of Twisted failures in 7 s).
WATCH_SECONDS = 8.0


def readyz(metrics_url: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection(metrics_url.removeprefix("http://"), timeout=5)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_an_agent_given_another_ca_says_once_that_the_controller_does_not_verify(
    tmp_path: Path,
) -> None:
    for directory in ("controller", "other", "node", "agent"):
        (tmp_path / directory).mkdir()
    controller = harness.ControllerProcess(tmp_path / "controller")
    other = harness.ControllerProcess(tmp_path / "other")  # init only: another node CA
    agent: harness.AgentProcess | None = None
    try:
        controller.start()
        credentials = controller.enroll(harness.unique("hv-"), tmp_path / "node")
        shutil.copy(other.state_dir / "node-ca.pem", credentials / "ca.pem")
        agent = harness.AgentProcess(controller.node_api_url, credentials, tmp_path / "agent")
        agent.start()
        time.sleep(WATCH_SECONDS)  # a real process retrying against a real controller
        expected = (
            f"controller {controller.node_api_url}: its certificate does not verify against "
            f"the CA in {credentials / 'ca.pem'} (certificate verify failed)"
        )
        output = agent.output
        assert len(re.findall(re.escape(expected), output)) == 1, output
        assert "Failure" not in output and "Traceback" not in output, output
        status, body = readyz(agent.metrics_url)
        assert (status, body.strip()) == (503, f"not yet synced with the controller: {expected}")
    finally:
        if agent is not None:
            agent.stop()
        controller.stop()
