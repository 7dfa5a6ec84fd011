"""An agent restart while the controller is down (issue 17, item 5): ``systemctl restart``
returns in seconds, not at TimeoutStartSec=, and a guest asking all the while is answered or
refused within a few seconds, never left waiting in a backlog nobody accepts from."""

from __future__ import annotations

import time

from tests.systemd.deployment import AGENT, CONTROLLER, Deployment

#: How long `systemctl restart` may take (the unit's TimeoutStartSec= is 5 minutes).
PROMPT_SECONDS = 15
#: Where the test stops waiting for it (then the job goes on; the teardown starts the controller).
BOUND_SECONDS = 20
#: The longest a guest's request may take: "a few seconds" (its client gives up at 10).
ANSWERED_SECONDS = 5


def test_an_agent_restart_with_the_controller_down_returns_promptly_and_hangs_no_guest(
    restored: Deployment,
) -> None:
    instance_id = restored.launch()
    token = restored.wait_served(instance_id)
    assert restored.systemctl("stop", CONTROLLER).returncode == 0
    with restored.guest_loop(instance_id, token, timeout=10) as loop:
        time.sleep(1)
        started = time.time()
        # Bounded here, so that a restart that blocks fails the test instead of stalling it.
        result = restored.container.run(
            ["timeout", str(BOUND_SECONDS), "systemctl", "restart", AGENT], check=False, timeout=60
        )
        ended = time.time()
        time.sleep(3)  # the guest goes on asking after the restart returned

    took = ended - started
    assert result.returncode != 124, (
        f"systemctl restart had not returned after {BOUND_SECONDS} s: {restored.unit(AGENT)}; "
        + loop.summary()
    )
    assert result.returncode == 0, result.stderr
    assert took < PROMPT_SECONDS, f"systemctl restart took {took:.1f} s"
    assert loop.in_flight(started, ended), "the guest asked nothing during the restart"
    hung = [record for record in loop.records if record[3] >= ANSWERED_SECONDS]
    assert hung == [], f"{len(hung)} requests waited {ANSWERED_SECONDS} s or more; {loop.summary()}"
    timed_out = [record for record in loop.errors() if "timed out" in str(record[2]).lower()]
    assert timed_out == [], loop.summary()
