"""Both units tell systemd they are ready (Type=notify), with the STATUS= their unit files
describe, and the agent's listening sockets sit in systemd's descriptor store, one per
instance."""

from __future__ import annotations

import re

from tests.systemd.deployment import AGENT, CONTROLLER, Deployment, UnitState, wait_until


def test_the_controller_is_ready_with_its_three_listeners_as_status(restored: Deployment) -> None:
    state = restored.unit(CONTROLLER)
    # Type=notify: "active (running)" only after READY=1.
    assert state.active, state
    assert state["StatusText"] == (
        "serving API on 127.0.0.1:8773, node API on 127.0.0.1:8775, metrics on 127.0.0.1:9773"
    ), state


def test_the_agent_is_ready_serving_its_instances_with_one_stored_socket_each(
    restored: Deployment,
) -> None:
    launched = [restored.launch(), restored.launch()]
    for instance_id in launched:
        restored.wait_served(instance_id)
    live = restored.live_instances()
    assert set(launched) <= live
    seen: list[UnitState] = []

    def counted() -> bool:
        seen.append(restored.unit(AGENT))
        status = seen[-1]["StatusText"]
        found = re.fullmatch(r"serving (\d+) instances?(, (\d+) not served)?", status)
        return found is not None and int(found.group(1)) == len(live) and not found.group(2)

    wait_until(counted, 15, lambda: f"STATUS= to say {len(live)} instances ({seen[-1]})")
    state = seen[-1]
    assert state.active, state
    assert int(state["NFileDescriptorStore"]) == len(live), state
