"""A PostgreSQL on the host for the controller in the test container (``make test-systemd``).

The container has a network namespace of its own (``--private-network``: a loopback and
nothing else), so it cannot reach the host's 127.0.0.1. It reaches the cluster through a Unix
socket instead: tests/pg.py's cluster, as every other test starts it, is given a second socket
directory, bound read-only into the container at /run/postgresql, where Debian's PostgreSQL puts
its own; the controller there connects with ``host=/run/postgresql``, as on a host that runs
its database itself. Connections on that socket need the role's password (SCRAM), so the test
exercises the password file handed to the unit, not the harness's ``trust``.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.pg import APP_USER, SUPERUSER, Cluster, running_cluster

#: Where the container sees the socket (Debian's own place for it).
INSIDE = "/run/postgresql"


@dataclass
class HostDatabase:
    """The cluster, and the directory of the socket the container sees as `INSIDE`."""

    cluster: Cluster
    socket_dir: Path

    @property
    def port(self) -> int:
        return self.cluster.primary.port

    def pgpass_line(self, dbname: str, password: str | None = None) -> str:
        """A libpq password file line for the application role. Its host is the socket
        directory as the DSN names it: libpq matches `localhost` only for its own default
        directory, which for psycopg's libpq is /var/run/postgresql, not /run/postgresql."""
        return f"{INSIDE}:{self.port}:{dbname}:{APP_USER}:{password or self.cluster.password}\n"

    def stop(self) -> None:
        """Stop the server (fast: sessions are ended), as a database outage."""
        self.cluster.pg_ctl(self.cluster.primary, "stop", "-w", "-m", "fast")

    def start(self) -> None:
        """Start it again on the same port, if it is stopped."""
        data = self.cluster.primary.data
        if (data / "postmaster.pid").exists():
            return
        self.cluster.pg_ctl(
            self.cluster.primary,
            "start", "-w", "-l", str(data.parent / f"{data.name}.log"), "-o", f"-p {self.port}",
        )  # fmt: skip

    def inside_dsn(self, dbname: str) -> str:
        """The DSN the controller in the container uses: no password in it."""
        return f"host={INSIDE} port={self.port} dbname={dbname} user={APP_USER}"


@contextmanager
def host_database() -> Iterator[HostDatabase]:
    """The cluster with its second socket directory; stopped and removed afterwards."""
    with running_cluster() as cluster:
        socket_dir = cluster.directory / "container-socket"
        socket_dir.mkdir(mode=0o755)
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SUPERUSER)
            os.chown(socket_dir, owner.pw_uid, owner.pw_gid)
        data = cluster.primary.data
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{cluster.socket_dir},{socket_dir}'\n")
        hba = data / "pg_hba.conf"
        # First match wins: a password on every Unix socket connection.
        hba.write_text("local all all scram-sha-256\n" + hba.read_text())
        cluster.pg_ctl(
            cluster.primary,
            "restart", "-w", "-m", "fast", "-l", str(data.parent / f"{data.name}.log"),
            "-o", f"-p {cluster.primary.port}",
        )  # fmt: skip
        yield HostDatabase(cluster, socket_dir)
