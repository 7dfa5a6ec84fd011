"""An agent that cannot start (an unknown key in agent.toml, as after an upgrade) is restarted
for as long as it takes and never marked failed, so systemd keeps the guests' sockets; its
ExecStartPre check says why in one line; once the file is fixed the agent comes back on the
same sockets (issue 17, item 4)."""

from __future__ import annotations

import time
from collections import defaultdict

from tests.systemd.deployment import (
    AGENT,
    AGENT_TOML,
    GUEST,
    ROLE,
    Deployment,
    UnitState,
)

#: systemd's default start limit is 5 starts in 10 s: fail for longer than that.
FAILING_SECONDS = 12
UNKNOWN = "unknown_setting"


def test_a_failing_agent_is_never_marked_failed_and_comes_back_on_the_same_sockets(
    restored: Deployment,
) -> None:
    instance_id = restored.launch()
    token = restored.wait_served(instance_id)
    before = restored.unit(AGENT)
    stored = before["NFileDescriptorStore"]
    assert int(stored) >= 1, before
    since = restored.now()

    restored.write_file("/etc/rolecall/agent.toml", f"{UNKNOWN} = 1\n{AGENT_TOML}", mode="0644")
    restored.systemctl("restart", "--no-block", AGENT)
    # A guest asks meanwhile: its connection waits in the stored socket's backlog.
    waiting = restored.container.spawn(
        ["ip", "netns", "exec", f"rc-{instance_id}", "python3", GUEST, "get",
         f"/latest/meta-data/iam/security-credentials/{ROLE}", "--token", token,
         "--timeout", "60"],
    )  # fmt: skip
    states: list[UnitState] = []
    deadline = time.monotonic() + FAILING_SECONDS
    while time.monotonic() < deadline:
        states.append(restored.unit(AGENT))
        time.sleep(0.25)
    entries = restored.journal(AGENT, since)

    active_states = {state["ActiveState"] for state in states}
    assert "failed" not in active_states, [str(state) for state in states]
    assert "active" not in {state["ActiveState"] for state in states[4:]}, "it did not fail"
    restarts = int(states[-1]["NRestarts"]) - int(before["NRestarts"])
    assert restarts >= 5, f"{restarts} restarts in {FAILING_SECONDS} s: {states[-1]}"
    kept = {state["NFileDescriptorStore"] for state in states}
    assert kept == {stored}, f"the stored sockets changed while failing: {kept}"

    # The check's one line, once per attempt, from the check itself (not a traceback).
    by_process: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        if entry.get("_PID") and entry.get("_PID") != "1":
            by_process[str(entry["_PID"])].append(str(entry.get("MESSAGE", "")))
    checks = {pid: lines for pid, lines in by_process.items() if any(UNKNOWN in x for x in lines)}
    assert len(checks) >= 5, f"the check's line is not in the journal: {dict(by_process)}"
    for pid, lines in checks.items():
        assert len(lines) == 1, f"process {pid} wrote {len(lines)} lines: {lines}"
        assert "unknown key" in lines[0] and "agent.toml" in lines[0], lines[0]

    restored.write_file("/etc/rolecall/agent.toml", AGENT_TOML, mode="0644")
    after = restored.wait_active(AGENT, timeout=15)
    assert after["NFileDescriptorStore"] == stored, (before, after)
    output, errors = waiting.communicate(timeout=90)
    assert output.split("\n", 1)[0] == "200", f"the waiting guest got: {output!r} {errors!r}"
    status, body = restored.credentials(instance_id, token)
    assert status == 200, body
