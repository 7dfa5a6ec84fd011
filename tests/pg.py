"""A real PostgreSQL for the tests: Debian's server binaries, a throwaway cluster.

`Cluster.start()` runs ``initdb`` into a fresh temporary directory as the unprivileged user
``postgres`` (when the tests run as root; else as the current user), then ``pg_ctl start -w`` on a
free port. It listens on 127.0.0.1 only and on a unix socket in a 0700 directory of the cluster's
owner. Authentication: ``trust`` on that socket (only its owner and root can reach it), SCRAM
with a random password over TCP; the password sits in a 0600 passfile in the cluster's directory,
so the DSNs the tests hand around carry ``passfile=`` and no password (as operators are told to
do). A session has one cluster (the `pg_cluster` fixture in tests/conftest.py) and each test its
own database (`pg_dsn`), made from ``template0`` and left for the cluster's removal at the
session's end.

Clusters left behind by a session that was killed (SIGKILL leaves no teardown) are found by
their directory's ``owner.pid`` and removed by the next session. `Cluster.start_standby()` adds
a streaming standby (``pg_basebackup -R``) for the failover tests.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT_GLOB = "/usr/lib/postgresql"
PREFIX = "rolecall-pg-"
APP_USER = "rolecall"
SUPERUSER = "postgres"
#: Server settings for a test cluster: small, and quick to stop; durability left at its
#: defaults (fsync on) so that what the tests see is what production sees.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "logging_collector": "off",
    "wal_level": "replica",
    "max_wal_senders": "4",
}


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def server_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/N/bin that has initdb (Debian's layout; never PATH)."""
    candidates = []
    for path in Path(ROOT_GLOB).glob("*/bin/initdb"):
        with contextlib.suppress(ValueError):
            candidates.append((int(path.parent.parent.name), path.parent))
    if not candidates:
        raise PostgresMissing(
            f"no PostgreSQL server binaries in {ROOT_GLOB}/*/bin: run `make install` "
            "(it installs Debian's postgresql package)"
        )
    return max(candidates)[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_as_owner() -> tuple[list[str], int | None, int | None]:
    """The command prefix that runs a server tool as the cluster's owner, and that owner's
    uid/gid (None: the current user, who is not root)."""
    if os.geteuid() != 0:
        return [], None, None
    owner = pwd.getpwnam(SUPERUSER)
    return ["runuser", "-u", SUPERUSER, "--"], owner.pw_uid, owner.pw_gid


def reap_abandoned(temp_root: Path | None = None) -> None:
    """Stop and remove clusters whose session died without its teardown (its pid is gone)."""
    for directory in Path(temp_root or tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            owner_pid = int((directory / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner_pid == os.getpid() or _alive(owner_pid):
            continue
        for data in directory.glob("data*"):
            _stop(server_bin_dir(), data)
        shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(bin_dir: Path, data: Path) -> None:
    prefix, _, _ = _run_as_owner()
    subprocess.run(
        [*prefix, str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w"],
        capture_output=True,
        check=False,
        timeout=60,
    )


@dataclass
class Server:
    """One running postmaster of a cluster (the primary or a standby)."""

    data: Path
    port: int


@dataclass
class Cluster:
    bin_dir: Path
    directory: Path
    socket_dir: Path
    passfile: Path
    password: str
    primary: Server
    standbys: list[Server] = field(default_factory=list)
    _counter: int = 0

    @classmethod
    def start(cls) -> Cluster:
        bin_dir = server_bin_dir()
        reap_abandoned()
        prefix, uid, gid = _run_as_owner()
        directory = Path(tempfile.mkdtemp(prefix=PREFIX))
        (directory / "owner.pid").write_text(str(os.getpid()))
        socket_dir = directory / "socket"
        socket_dir.mkdir(mode=0o700)
        password = secrets.token_urlsafe(24)
        passfile = directory / "pgpass"
        passfile.write_text(f"*:*:*:{SUPERUSER}:{password}\n*:*:*:{APP_USER}:{password}\n")
        passfile.chmod(0o600)
        pwfile = directory / "pwfile"
        pwfile.write_text(password + "\n")
        if uid is not None and gid is not None:
            for path in (directory, socket_dir, passfile, pwfile):
                os.chown(path, uid, gid)
        data = directory / "data"
        cluster = cls(bin_dir, directory, socket_dir, passfile, password, Server(data, 0))
        try:
            _run(
                [
                    *prefix,
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    # The cluster is thrown away with its directory: initdb need not fsync it.
                    "--no-sync",
                ],
                "initdb",
            )
            pwfile.unlink()
            cluster._configure(data)
            cluster.primary = cluster._start_server(data)
            cluster._superuser_sql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{password}'")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _configure(self, data: Path) -> None:
        lines = [f"{key} = {value}" for key, value in SETTINGS.items()]
        lines.append(f"unix_socket_directories = '{self.socket_dir}'")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# rolecall tests\n" + "\n".join(lines) + "\n")

    def _start_server(self, data: Path) -> Server:
        prefix, _, _ = _run_as_owner()
        # A free port can be taken between the probe and the bind: try a few.
        for _attempt in range(5):
            port = free_port()
            started = subprocess.run(
                [
                    *prefix,
                    str(self.bin_dir / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(data),
                    "-l",
                    str(data.parent / f"{data.name}.log"),
                    "-o",
                    f"-p {port}",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=90,
                # Its own session: a Ctrl-C at the terminal reaches pytest, whose teardown
                # stops the server, and not the server first.
                start_new_session=True,
            )
            if started.returncode == 0:
                return Server(data, port)
            log = data.parent / f"{data.name}.log"
            if "could not bind" not in (log.read_text() if log.exists() else ""):
                raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}{started.stderr}")
        raise RuntimeError("pg_ctl start failed: no free port after 5 tries")

    def dsn(self, dbname: str = "postgres", user: str = APP_USER, port: int | None = None) -> str:
        """A libpq connection string over TCP; the password is in the passfile, not here."""
        return (
            f"host=127.0.0.1 port={port or self.primary.port} dbname={dbname} user={user} "
            f"passfile={self.passfile}"
        )

    def _superuser_sql(self, *statements: str, port: int | None = None) -> None:
        import psycopg

        with psycopg.connect(
            self.dsn(user=SUPERUSER, port=port), autocommit=True, connect_timeout=10
        ) as connection:
            for statement in statements:
                connection.execute(statement.encode())

    def create_database(self, template: str = "template0") -> str:
        """A fresh database owned by the unprivileged `rolecall` role (a copy of `template`:
        empty by default); its name."""
        self._counter += 1
        name = f"t{os.getpid()}_{self._counter}_{secrets.token_hex(3)}"
        self._superuser_sql(f"CREATE DATABASE {name} OWNER {APP_USER} TEMPLATE {template}")
        return name

    def drop_database(self, name: str) -> None:
        self._superuser_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    @contextlib.contextmanager
    def database(self, template: str = "template0") -> Iterator[str]:
        """A fresh database for the block; yields its DSN. It is not dropped afterwards (a drop
        costs a checkpoint's fsyncs, about 0.2 s): the whole cluster goes at the session's end."""
        yield self.dsn(self.create_database(template))

    def start_standby(self) -> Server:
        """A streaming standby of the primary (pg_basebackup -R), running on its own port. Make
        it from a cluster of the test's own (`running_cluster()`): the session's holds every
        test's database, and a base backup copies them all."""
        prefix, _, _ = _run_as_owner()
        data = self.directory / f"data-standby{len(self.standbys) + 1}"
        _run(
            [
                *prefix,
                str(self.bin_dir / "pg_basebackup"),
                "-D",
                str(data),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.primary.port),
                "-U",
                SUPERUSER,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            "pg_basebackup",
        )
        standby = self._start_server(data)
        self.standbys.append(standby)
        return standby

    def pg_ctl(self, server: Server, *arguments: str) -> None:
        """Run pg_ctl (stop, promote, start, ...) on one server of the cluster as its owner (a
        server it starts logs to a file: an inherited pipe would keep this call waiting)."""
        prefix, _, _ = _run_as_owner()
        log = ["-l", str(server.data.parent / f"{server.data.name}.log")]
        starts = arguments[0] in ("start", "restart")
        _run(
            [
                *prefix,
                str(self.bin_dir / "pg_ctl"),
                *arguments,
                *(log if starts else []),
                "-D",
                str(server.data),
            ],
            "pg_ctl",
        )

    def restart(self, server: Server, mode: str = "fast") -> None:
        """Restart one server on its own port (``immediate``: as after a crash)."""
        self.pg_ctl(server, "restart", "-w", "-m", mode, "-o", f"-p {server.port}")

    def stop(self) -> None:
        """Stop every server at once (no checkpoint: the cluster is thrown away) and remove it."""
        for server in [*self.standbys, self.primary]:
            if (server.data / "postmaster.pid").exists():
                _stop(self.bin_dir, server.data)
        shutil.rmtree(self.directory, ignore_errors=True)


def _run(command: list[str], what: str) -> None:
    # Its own session: a Ctrl-C at the terminal reaches pytest (whose teardown stops what runs)
    # and not a server that pg_ctl starts.
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        start_new_session=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def dsn_parts(dsn: str) -> dict[str, str]:
    """The key=value pairs of a libpq keyword/value string (the tests' own DSNs only)."""
    return dict(re.findall(r"(\w+)=(\S+)", dsn))


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A cluster for a block (the session fixture's body), stopped and removed also on Ctrl-C,
    and at interpreter exit should the block's own cleanup not run."""
    cluster = Cluster.start()
    atexit.register(cluster.stop)
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: object) -> None:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield cluster
    finally:
        signal.signal(signal.SIGTERM, previous)
        atexit.unregister(cluster.stop)
        cluster.stop()


def wait_for_recovery_end(cluster: Cluster, server: Server, timeout: float = 30) -> None:
    """Poll until `server` accepts writes (after a promote)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(cluster.dsn(user=SUPERUSER, port=server.port)) as connection:
            row = connection.execute("SELECT pg_is_in_recovery()").fetchone()
        if row is not None and not row[0]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"server on port {server.port} still in recovery")
        time.sleep(0.05)
