"""``rolecall-controller`` with several hosts on one PostgreSQL (in process, a real database):
init on a second host shares what the first made and issues only its own node API certificate;
rotate, enroll, check-config, identity-certificate and audit read the database. And ``audit``
on SQLite, which filters the file."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from cryptography import x509

from controller.cli import main
from controller.keyring import ensure_key_ring, load_key_ring


def run(config: Path, state: Path, *arguments: str) -> int:
    return main(["--config", str(config), "--state-dir", str(state), *arguments])


@pytest.fixture
def config(tmp_path: Path, pg_dsn: str) -> Path:
    path = tmp_path / "controller.toml"
    path.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{pg_dsn}"\n')
    return path


def shared(dsn: str, name: str) -> str | None:
    with psycopg.connect(dsn) as connection:
        row = connection.execute("SELECT value FROM shared_state WHERE name = %s", (name,))
        found = row.fetchone()
    return None if found is None else str(found[0])


def test_init_on_a_second_host_issues_only_its_node_api_certificate_from_the_shared_ca(
    config: Path, tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    assert run(config, host_a, "init", "--account-id", "111122223333") == 0
    first = capsys.readouterr().out
    assert "Initialised RoleCall in the store (PostgreSQL" in first
    ca_pem, ring = shared(pg_dsn, "node-ca.pem"), shared(pg_dsn, "token-keys")
    assert ca_pem is not None and ring is not None
    assert run(config, host_b, "init", "--node-api-name", "controller-b.example") == 0
    second = capsys.readouterr().out
    assert "already initialised in the store (PostgreSQL" in second
    assert "certificate for controller-b.example, issued now from the shared node CA" in second
    assert (shared(pg_dsn, "node-ca.pem"), shared(pg_dsn, "token-keys")) == (ca_pem, ring)
    assert sorted(path.name for path in host_b.iterdir()) == ["node-api.key", "node-api.pem"]
    served = x509.load_pem_x509_certificate((host_b / "node-api.pem").read_bytes())
    served.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem.encode()))
    # Again on B: nothing new; the certificate it has is kept.
    assert run(config, host_b, "init") == 0
    assert "issued before" in capsys.readouterr().out


def test_init_adopts_a_state_directorys_key_ring_when_the_database_has_none(
    config: Path, tmp_path: Path, pg_dsn: str
) -> None:
    from datetime import UTC, datetime

    state = tmp_path / "moved"
    state.mkdir(mode=0o700)
    ring = ensure_key_ring(state / "token-keys.json", datetime.now(UTC))
    assert run(config, state, "init") == 0
    text = shared(pg_dsn, "token-keys")
    assert text is not None and ring.active_id in text


def test_rotate_enroll_check_and_identity_work_from_any_host(
    config: Path, tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    assert run(config, host_a, "init") == 0
    assert run(config, host_b, "init") == 0
    capsys.readouterr()
    assert run(config, host_b, "rotate-token-key") == 0
    rotated = capsys.readouterr().out
    assert "as soon as the database tells it" in rotated
    text = shared(pg_dsn, "token-keys")
    assert text is not None and json.loads(text)["active"] in rotated
    assert run(config, host_a, "check-config") == 0
    assert json.loads(text)["active"] in capsys.readouterr().out
    assert run(config, host_b, "enroll-node", "hv-9", "--out", str(tmp_path / "hv-9")) == 0
    node_ca = (tmp_path / "hv-9" / "ca.pem").read_text()
    assert node_ca == shared(pg_dsn, "node-ca.pem")
    capsys.readouterr()
    assert run(config, host_a, "identity-certificate") == 0
    assert capsys.readouterr().out == shared(pg_dsn, "instance-identity.pem")


def test_audit_reads_the_table_filtered_by_time_and_instance(
    config: Path, tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, tmp_path / "a", "init") == 0
    records = [
        {"time": f"2024-05-01T12:00:0{n}Z", "instance_id": f"i-0000000{n}", "access_key_id": n}
        for n in range(1, 4)
    ]
    with psycopg.connect(pg_dsn) as connection:
        for record in records:
            connection.execute(
                "INSERT INTO audit_log (time, instance_id, record) VALUES (%s, %s, %s)",
                (record["time"], record["instance_id"], json.dumps(record)),
            )
    capsys.readouterr()
    assert run(config, tmp_path / "a", "audit", "--since", "2024-05-01T12:00:02+00:00") == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == records[1:]
    assert run(config, tmp_path / "a", "audit", "--instance", "i-00000001") == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == records[:1]


def test_audit_on_sqlite_filters_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "init"]) == 0
    lines = [
        json.dumps({"time": "2024-05-01T12:00:01Z", "instance_id": "i-00000001"}),
        json.dumps({"time": "2024-05-01T12:00:02Z", "instance_id": "i-00000002"}),
        '{"time": "2024-05-01T12:00:0',  # cut short by a crash
    ]
    (state / "audit.log").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["--state-dir", str(state), "audit", "--since", "2024-05-01T12:00:02Z"]) == 0
    assert capsys.readouterr().out.splitlines() == [lines[1]]
    assert main(["--state-dir", str(state), "audit", "--instance", "i-00000001"]) == 0
    assert capsys.readouterr().out.splitlines() == [lines[0]]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--since", "yesterday"), ("--since", "2024-05-01T12:00:00"), ("--instance", "x")],
)
def test_audit_refuses_a_bad_filter_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--state-dir", str(tmp_path), "audit", flag, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and "Traceback" not in error


def test_a_key_ring_file_stays_the_ring_on_sqlite(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "init"]) == 0
    before = load_key_ring(state / "token-keys.json")
    assert main(["--state-dir", str(state), "rotate-token-key"]) == 0
    assert load_key_ring(state / "token-keys.json").get(before.active_id) is not None


def test_migrate_store_moves_the_state_directorys_shared_files_into_the_database_once(
    config: Path, tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "sqlite-host"
    assert main(["--state-dir", str(state), "init"]) == 0
    record = {"time": "2024-05-01T12:00:01Z", "instance_id": "i-00000001", "node": "hv1"}
    (state / "audit.log").write_text(json.dumps(record) + "\n")
    ring = load_key_ring(state / "token-keys.json")
    capsys.readouterr()
    assert main(["--state-dir", str(state), "migrate-store", "--to", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert f"token key ring: copied from {state / 'token-keys.json'}" in out
    assert "audit log: 1 records copied" in out
    text = shared(pg_dsn, "token-keys")
    assert text is not None and json.loads(text)["active"] == ring.active_id
    assert shared(pg_dsn, "node-ca.pem") == (state / "node-ca.pem").read_text()
    assert shared(pg_dsn, "instance-identity.pem") == (state / "instance-identity.pem").read_text()
    with psycopg.connect(pg_dsn) as connection:
        rows = connection.execute("SELECT instance_id, record FROM audit_log").fetchall()
    assert [(instance_id, json.loads(text)) for instance_id, text in rows] == [
        ("i-00000001", record)
    ]
    # Again: nothing changes. Then this host, switched to PostgreSQL, keeps what it had.
    assert main(["--state-dir", str(state), "migrate-store", "--to", pg_dsn]) == 0
    again = capsys.readouterr().out
    assert "the database has one already" in again and "has records already" in again
    assert run(config, state, "init") == 0
    assert "already initialised in the store (PostgreSQL" in capsys.readouterr().out
    assert shared(pg_dsn, "token-keys") == text
