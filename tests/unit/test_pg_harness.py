"""The PostgreSQL harness (tests/pg.py) gives each test its own empty database on a cluster
that listens on loopback only and runs as the unprivileged user."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from tests.pg import Cluster, dsn_parts


def test_each_test_gets_an_empty_database_it_owns(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        connection.execute("CREATE TABLE probe (id integer)")
        user = connection.execute(
            "SELECT current_user, usesuper FROM pg_user WHERE usename = current_user"
        ).fetchone()
    assert tables == (0,)
    assert user == ("rolecall", False)


def test_the_dsn_carries_no_password_and_the_server_listens_on_loopback_only(
    pg_cluster: Cluster, pg_dsn: str
) -> None:
    parts = dsn_parts(pg_dsn)
    assert "password" not in parts
    assert parts["host"] == "127.0.0.1"
    with psycopg.connect(pg_dsn) as connection:
        listen = connection.execute("SHOW listen_addresses").fetchone()
    assert listen == ("127.0.0.1",)
    if os.geteuid() == 0:
        assert pg_cluster.primary.data.stat().st_uid != 0
    assert pg_cluster.socket_dir.stat().st_mode & 0o077 == 0


def test_a_wrong_password_is_refused(pg_cluster: Cluster, pg_dsn: str, tmp_path: Path) -> None:
    wrong = tmp_path / "pgpass"
    wrong.write_text("*:*:*:rolecall:not-the-password\n")
    wrong.chmod(0o600)
    dsn = pg_dsn.replace(str(pg_cluster.passfile), str(wrong))
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.OperationalError as error:
        assert "password authentication failed" in str(error)
    else:
        raise AssertionError("a wrong password was accepted")


def test_a_streaming_standby_follows_the_primary_and_can_be_promoted() -> None:
    """For the failover tests: pg_basebackup -R, streaming, then pg_ctl promote, on a cluster of
    the test's own (the session's holds every test's database: a base backup of it grows with
    the suite)."""
    import psycopg

    from tests.pg import running_cluster, wait_for_recovery_end
    from tests.waiting import wait_until

    with running_cluster() as cluster:
        name = cluster.create_database()
        with psycopg.connect(cluster.dsn(name), autocommit=True) as connection:
            connection.execute("CREATE TABLE probe (id integer)")
            connection.execute("INSERT INTO probe VALUES (1)")
        standby = cluster.start_standby()

        def replicated() -> bool:
            with psycopg.connect(cluster.dsn(name, port=standby.port)) as connection:
                row = connection.execute("SELECT count(*), pg_is_in_recovery() FROM probe")
                return row.fetchone() == (1, True)

        wait_until(replicated, 30, "the standby to replay the primary's insert")
        cluster.pg_ctl(standby, "promote", "-w")
        wait_for_recovery_end(cluster, standby)
        with psycopg.connect(cluster.dsn(name, port=standby.port), autocommit=True) as promoted:
            promoted.execute("INSERT INTO probe VALUES (2)")
