"""The controller's unit on PostgreSQL, under systemd 252, as docs/operations.md ("Several
controllers on PostgreSQL") installs it: the drop-in hands the database password over as a
credential, the controller serves from the database, and the password is nowhere else to be
read: not in the units, the configuration, the environment, the command lines or the journal.
A wrong password stops the start in ExecStartPre's check, saying so without the password; a
database that is down when the controller starts delays it, and it comes up by itself after.

The database is a cluster on the host, reached through its Unix socket at /run/postgresql
(tests/systemd/database.py). The tests restart the controller several times and each makes a
whole new state in the database (about 10 s each on an idle machine; the outage waits for three
restarts by systemd, 2 s apart): they are the only checks that the drop-in, the `%d` specifier
and the documented `rcc` work with a real systemd, so they are worth their time.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import psycopg
import pytest

from tests.pg import APP_USER
from tests.systemd.database import HostDatabase
from tests.systemd.deployment import (
    AGENT,
    CONTROLLER,
    CONTROLLER_TOML,
    REPO,
    SOURCE,
    STATE_DIR,
    VENV_BIN,
    Deployment,
)
from tests.waiting import wait_until

#: This test's state directory: the SQLite deployment's stays as it is, for the other tests.
PG_STATE_DIR = f"{STATE_DIR}/pg"
PGPASS = "/etc/rolecall/pgpass"
DROP_IN = "/etc/systemd/system/rolecall-controller.service.d/postgresql.conf"
#: The test's own drop-in beside it, lowering the start limit's burst.
BURST = "/etc/systemd/system/rolecall-controller.service.d/zz-test-burst.conf"
CREDENTIALS = f"/run/credentials/{CONTROLLER}.service"
OPERATIONS = REPO / "docs" / "operations.md"


def section() -> str:
    text = OPERATIONS.read_text(encoding="utf-8")
    return text.split("\n## Several controllers on PostgreSQL\n", 1)[1].split("\n## ", 1)[0]


def documented_block(containing: str) -> str:
    """The ``sh`` block of the section that contains `containing`."""
    for block in re.findall(r"```sh\n(.*?)```", section(), re.DOTALL):
        if containing in block:
            return str(block)
    raise AssertionError(f"docs/operations.md: no sh block with {containing!r}")


def rcc_function() -> str:
    """The documented ``rcc`` shell function, with this test's state directory."""
    block = documented_block("rcc() {")
    lines = block.splitlines()
    start = lines.index("rcc() {")
    function = "\n".join(lines[start : lines.index("}", start) + 1]) + "\n"
    assert f"--state-dir {STATE_DIR} " in function
    return function.replace(f"--state-dir {STATE_DIR} ", f"--state-dir {PG_STATE_DIR} ")


def controller_toml(database: HostDatabase, dbname: str) -> str:
    head, rest = CONTROLLER_TOML.split("\n", 1)
    assert head == f'state_dir = "{STATE_DIR}"'
    return (
        f'state_dir = "{PG_STATE_DIR}"\n\n[store]\nbackend = "postgresql"\n'
        f'dsn = "{database.inside_dsn(dbname)}"\n{rest}'
    )


@pytest.fixture
def on_postgresql(restored: Deployment, database: HostDatabase) -> Iterator[tuple[str, str]]:
    """The controller's unit switched to a fresh database as docs/operations.md says (the agent
    stopped meanwhile: this controller has another CA); afterwards the SQLite deployment as
    before. Yields (database name, password)."""
    run = restored.container.run
    dbname = database.cluster.create_database()
    restored.systemctl("stop", AGENT, CONTROLLER)
    try:
        run(["install", "-d", "-m", "0700", "-o", "rolecall", "-g", "rolecall", PG_STATE_DIR])
        configuration = controller_toml(database, dbname)
        restored.write_file("/etc/rolecall/controller.toml", configuration, mode="0644")
        # The documented install of the password file and the drop-in, run as written, with
        # this database's line in place of the example's.
        install = documented_block("rolecall-controller-postgresql.conf")
        example = "'*:5432:rolecall:rolecall:PASSWORD'"
        assert example in install
        line = database.pgpass_line(dbname).strip()
        restored.container.shell(f"cd {SOURCE}\n" + install.replace(example, f"'{line}'"))
        yield dbname, database.cluster.password
    finally:
        restored.systemctl("stop", CONTROLLER)
        run(["rm", "-rf", DROP_IN, PGPASS, PG_STATE_DIR])
        run(["systemctl", "daemon-reload"])
        restored.write_file("/etc/rolecall/controller.toml", CONTROLLER_TOML, mode="0644")
        restored.systemctl("reset-failed", CONTROLLER)
        restored.systemctl("start", CONTROLLER)
        restored.systemctl("start", AGENT)
        database.cluster.drop_database(dbname)


def test_the_controller_serves_from_postgresql_with_the_password_handed_over_by_systemd(
    restored: Deployment, database: HostDatabase, on_postgresql: tuple[str, str]
) -> None:
    dbname, password = on_postgresql
    run = restored.container.run
    since = restored.now()

    # The documented rcc: init as the service's user, with the password as a credential.
    initialised = restored.container.shell(
        rcc_function() + "rcc init --node-api-name 127.0.0.1\n", check=False, timeout=120
    )
    assert initialised.returncode == 0, initialised.stdout + initialised.stderr
    assert "PGPASSFILE" not in initialised.stdout + initialised.stderr
    assert restored.systemctl("start", CONTROLLER, timeout=120).returncode == 0
    unit = restored.wait_active(CONTROLLER, timeout=60)

    # %d is the unit's credentials directory; the copy is the service user's to read, the
    # original is root's alone.
    shown = run(["systemctl", "show", CONTROLLER, "--property=Environment"]).stdout.strip()
    assert shown == f"Environment=PGPASSFILE={CREDENTIALS}/pgpass"
    copy = run(["stat", "--format=%U %a", f"{CREDENTIALS}/pgpass"]).stdout.split()
    assert copy == ["rolecall", "400"]
    assert run(["stat", "--format=%U %a", PGPASS]).stdout.split() == ["root", "600"]
    refused = run(["runuser", "-u", "rolecall", "--", "cat", PGPASS], check=False)
    assert refused.returncode != 0

    # It serves from the database: a role made through its API is a row there.
    role = f"pgrole{secrets.token_hex(3)}"
    tools = {"AWS_SHARED_CREDENTIALS_FILE": f"{PG_STATE_DIR}/root-credentials"}
    made = run(
        [f"{VENV_BIN}/iam-rolecreate", "-r", role, "-s", "ec2.amazonaws.com"],
        env={**tools, "AWS_PROFILE": "rolecall", "AWS_ENDPOINT_URL": "http://127.0.0.1:8773"},
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    with psycopg.connect(database.cluster.dsn(dbname)) as connection:
        rows = connection.execute("SELECT name FROM roles WHERE name = %s", (role,)).fetchall()
    assert rows == [(role,)]
    # And rcc reaches the same database from outside the unit.
    nodes = restored.container.shell(rcc_function() + "rcc nodes\n", check=False)
    assert nodes.returncode == 0, nodes.stderr

    # The password is nowhere else.
    main_pid = unit["MainPID"]
    places = {
        "systemctl show": run(["systemctl", "show", CONTROLLER]).stdout,
        "systemctl cat": run(["systemctl", "cat", CONTROLLER]).stdout,
        "controller.toml": run(["cat", "/etc/rolecall/controller.toml"]).stdout,
        "environ": run(["cat", f"/proc/{main_pid}/environ"]).stdout,
        "cmdline": run(["cat", f"/proc/{main_pid}/cmdline"]).stdout,
        "journal": "\n".join(restored.messages(restored.journal(CONTROLLER, since))),
        "state": run(["grep", "-rl", password, PG_STATE_DIR], check=False).stdout,
    }
    assert [place for place, text in places.items() if password in text] == []
    assert APP_USER in places["controller.toml"]


def test_a_wrong_password_stops_the_start_in_the_check_without_showing_it(
    restored: Deployment, database: HostDatabase, on_postgresql: tuple[str, str]
) -> None:
    dbname, _ = on_postgresql
    wrong = secrets.token_hex(12)
    restored.write_file(PGPASS, database.pgpass_line(dbname, wrong), mode="0600")
    since = restored.now()
    started = restored.systemctl("start", CONTROLLER, timeout=120)
    assert started.returncode != 0
    state = restored.unit(CONTROLLER)
    assert state["ActiveState"] in ("failed", "activating", "inactive"), state
    logged = "\n".join(restored.messages(restored.journal(CONTROLLER, since)))
    assert "password authentication failed" in logged, logged[-2000:]
    assert wrong not in logged
    assert "Traceback" not in logged, logged[-2000:]


def init_and_start(restored: Deployment) -> None:
    """The documented `rcc init`, then the unit started and active."""
    initialised = restored.container.shell(
        rcc_function() + "rcc init --node-api-name 127.0.0.1\n", check=False, timeout=120
    )
    assert initialised.returncode == 0, initialised.stdout + initialised.stderr
    assert restored.systemctl("start", CONTROLLER, timeout=120).returncode == 0
    restored.wait_active(CONTROLLER, timeout=60)


def test_a_database_down_at_start_delays_the_controller_and_it_comes_up_by_itself(
    restored: Deployment, database: HostDatabase, on_postgresql: tuple[str, str]
) -> None:
    """systemd's default start limit is five starts in ten seconds; whether failing starts
    reach it depends on how fast the machine starts Python. A drop-in of the test's lowers the
    burst to two, so that without the PostgreSQL drop-in's StartLimitIntervalSec=0 the limit is
    hit on any machine (the unit then stays failed when the database is back)."""
    init_and_start(restored)
    run = restored.container.run
    run(["sh", "-ec", f"printf '[Unit]\\nStartLimitBurst=2\\n' > {BURST}; systemctl daemon-reload"])
    database.stop()
    try:
        assert restored.systemctl("restart", CONTROLLER, timeout=120).returncode != 0
        first = int(restored.unit(CONTROLLER)["NRestarts"])

        def restarted_past_the_start_limit() -> bool:
            state = restored.unit(CONTROLLER)
            assert state["Result"] != "start-limit-hit", state
            return int(state["NRestarts"]) >= first + 3

        wait_until(restarted_past_the_start_limit, 60, "three restarts by systemd")
    finally:
        database.start()
        run(["sh", "-ec", f"rm -f {BURST}; systemctl daemon-reload"])
    # Back by itself: no systemctl start here.
    restored.wait_active(CONTROLLER, timeout=60)
