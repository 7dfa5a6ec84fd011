"""``rolecall-controller init``: what it creates, and that running it twice destroys nothing."""

from __future__ import annotations

import configparser
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from controller.cli import main
from controller.keyring import load_key_ring
from controller.store.sql import migrations


def init(state_dir: Path, *extra: str) -> int:
    return main(["--state-dir", str(state_dir), "init", *extra])


def test_init_creates_a_private_state_directory_store_and_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert init(state, "--account-id", "111122223333") == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    credentials_file = state / "root-credentials"
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "rolecall.db").stat().st_mode) == 0o600
    credentials = configparser.ConfigParser()
    credentials.read(credentials_file)
    key_id = credentials["rolecall"]["aws_access_key_id"]
    assert key_id.startswith("AKIA") and len(key_id) == 20
    assert len(credentials["rolecall"]["aws_secret_access_key"]) == 40
    out = capsys.readouterr().out
    assert "111122223333" in out
    assert "--profile rolecall" in out and "--endpoint-url http://127.0.0.1:8773" in out
    assert credentials["rolecall"]["aws_secret_access_key"] not in out


def test_init_uses_wal_and_records_the_schema_version(tmp_path: Path) -> None:
    init(tmp_path / "s")
    with sqlite3.connect(tmp_path / "s" / "rolecall.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        assert version == migrations()[-1][0]
        accounts = connection.execute("SELECT account_id FROM accounts").fetchall()
    assert len(accounts) == 1
    assert len(accounts[0][0]) == 12 and accounts[0][0].isdigit()


def test_running_init_twice_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    init(state, "--account-id", "111122223333")
    before = (state / "root-credentials").read_bytes()
    assert init(state) == 0
    assert (state / "root-credentials").read_bytes() == before
    assert "already initialised" in capsys.readouterr().out
    with sqlite3.connect(state / "rolecall.db") as connection:
        assert connection.execute("SELECT COUNT(*) FROM access_keys").fetchone()[0] == 1


def test_init_again_with_another_account_id_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    init(state, "--account-id", "111122223333")
    assert init(state, "--account-id", "444455556666") == 1
    err = capsys.readouterr().err
    assert "111122223333" in err and "not changed" in err


@pytest.mark.parametrize("account_id", ["12345", "12345678901a", "1234567890123"])
def test_a_malformed_account_id_is_refused_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], account_id: str
) -> None:
    assert init(tmp_path / "state", "--account-id", account_id) == 1
    assert "--account-id must be 12 digits" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_serve_refuses_an_uninitialised_state_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--state-dir", str(tmp_path / "empty"), "serve"]) == 1
    assert "is not initialised" in capsys.readouterr().err


def test_serve_refuses_a_metrics_port_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--state-dir", str(tmp_path / "s"), "serve", "--metrics-port", "70000"])
    assert exited.value.code == 2
    assert "--metrics-port: must be from 0 to 65535" in capsys.readouterr().err


def test_a_bad_config_file_is_reported_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "controller.toml"
    config.write_text("[api]\nport = 99999\n")
    assert main(["--config", str(config), "--state-dir", str(tmp_path / "s"), "serve"]) == 1
    assert "api.port" in capsys.readouterr().err


def test_init_creates_a_private_token_key_ring(tmp_path: Path) -> None:
    init(tmp_path / "s")
    ring_file = tmp_path / "s" / "token-keys.json"
    assert stat.S_IMODE(ring_file.stat().st_mode) == 0o600
    ring = load_key_ring(ring_file)
    assert ring.active().key_id == ring.active_id


def test_account_create_writes_a_new_root_key_and_prints_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    init(state, "--account-id", "111122223333")
    capsys.readouterr()
    code = main(
        ["--state-dir", str(state), "account", "create", "other", "--account-id", "444455556666"]
    )
    assert code == 0
    path = state / "accounts" / "444455556666-root-credentials"
    assert str(path) in capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credentials = configparser.ConfigParser()
    credentials.read(path)
    assert credentials["rolecall"]["aws_access_key_id"].startswith("AKIA")
    assert main(["--state-dir", str(state), "account", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["111122223333", "444455556666"]
    assert listed[1].endswith("other")


def test_account_create_refuses_an_existing_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    init(state, "--account-id", "111122223333")
    code = main(
        ["--state-dir", str(state), "account", "create", "dup", "--account-id", "111122223333"]
    )
    assert code == 1
    assert "exists already" in capsys.readouterr().err


def test_account_create_needs_an_initialised_state_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--state-dir", str(tmp_path / "none"), "account", "create", "x"]) == 1
    assert "is not initialised" in capsys.readouterr().err


def test_rotate_token_key_revoke_previous_leaves_only_a_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    init(state)
    main(["--state-dir", str(state), "rotate-token-key"])
    before = load_key_ring(state / "token-keys.json")
    assert len(before.keys) == 2
    capsys.readouterr()
    assert main(["--state-dir", str(state), "rotate-token-key", "--revoke-previous"]) == 0
    after = load_key_ring(state / "token-keys.json")
    out = capsys.readouterr().out
    assert [key.key_id for key in after.keys] == [after.active_id]
    assert after.active_id not in {key.key_id for key in before.keys}
    assert "every other key is gone" in out and "systemctl restart rolecall-agent" in out


def test_init_makes_an_existing_state_directory_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    assert init(state) == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert f"Made {state} private to its owner (mode 0700)" in capsys.readouterr().out


def test_serve_refuses_a_state_directory_open_to_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    init(state)
    state.chmod(0o755)
    assert main(["--state-dir", str(state), "serve"]) == 1
    assert (
        f"state directory {state}: is open to group or others (mode 0755)"
        in capsys.readouterr().err
    )


def test_rotate_token_key_activates_a_new_key_and_keeps_the_old_one_verifying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    init(state)
    before = load_key_ring(state / "token-keys.json")
    capsys.readouterr()
    assert main(["--state-dir", str(state), "rotate-token-key"]) == 0
    after = load_key_ring(state / "token-keys.json")
    out = capsys.readouterr().out
    assert after.active_id != before.active_id
    assert after.active_id in out and before.active_id in out
    old = after.get(before.active_id)
    assert old is not None and old.retire_after is not None
    assert old.secret == before.active().secret


NOBODY = 65534


@pytest.mark.parametrize(
    "command",
    [
        ["init"],
        ["account", "create", "second"],
        ["account", "list"],
        ["rotate-token-key"],
        ["rotate-token-key", "--revoke-previous"],
        ["enroll-node", "compute9", "--out", "OUT"],
        ["retire-node", "compute9"],
        ["nodes"],
        ["serve"],
    ],
    ids=lambda command: " ".join(command),
)
def test_a_command_run_by_another_user_than_the_states_owner_refuses_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """As when root runs an admin command on the service user's state: one line saying whom to
    run it as, and no file of root's left behind for the service to trip on."""
    state = tmp_path / "s"
    init(state)
    before = {path: (path.stat().st_mtime_ns, path.stat().st_size) for path in state.rglob("*")}
    for path in [state, *state.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    capsys.readouterr()
    argv = [str(tmp_path / "out") if part == "OUT" else part for part in command]
    assert main(["--state-dir", str(state), *argv]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"state directory {state}: belongs to nobody, not to root who runs this command" in error
    assert "runuser -u nobody -- rolecall-controller" in error
    after = {path: (path.stat().st_mtime_ns, path.stat().st_size) for path in state.rglob("*")}
    assert after == before
    assert all(path.stat().st_uid == NOBODY for path in state.rglob("*"))
    assert not (tmp_path / "out").exists()


def test_check_config_says_ok_for_an_initialised_state_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    init(state)
    before = {path: path.stat().st_mtime_ns for path in state.rglob("*")}
    capsys.readouterr()
    assert main(["--state-dir", str(state), "check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"rolecall-controller: configuration OK: state {state}, store {state / 'rolecall.db'},"
        " token key "
    )
    assert {path: path.stat().st_mtime_ns for path in state.rglob("*")} == before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda state: state.chmod(0o755), "is open to group or others"),
        (lambda state: (state / "token-keys.json").chmod(0o644), "token key ring"),
        (lambda state: (state / "node-api.pem").unlink(), "has no node API certificate"),
        (lambda state: (state / "rolecall.db").unlink(), "is not initialised"),
    ],
    ids=["state mode", "key ring mode", "no node API certificate", "no store"],
)
def test_check_config_names_what_would_stop_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object, message: str
) -> None:
    state = tmp_path / "s"
    init(state)
    damage(state)  # type: ignore[operator]
    capsys.readouterr()
    assert main(["--state-dir", str(state), "check-config"]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def _postgresql_config(tmp_path: Path, dsn: str) -> Path:
    config = tmp_path / "controller.toml"
    config.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n')
    return config


def test_commands_on_a_postgresql_store_say_to_run_init_until_it_is_initialised(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _postgresql_config(tmp_path, pg_dsn)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    assert main(["--config", str(config), "--state-dir", str(state), "account", "list"]) == 1
    error = capsys.readouterr().err
    assert "is not initialised (no account); run: rolecall-controller init" in error
    assert "passfile" not in error


def test_init_on_a_postgresql_store_creates_the_account_there_and_twice_changes_nothing(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    config = _postgresql_config(tmp_path, pg_dsn)
    state = tmp_path / "state"
    arguments = ["--config", str(config), "--state-dir", str(state)]
    assert main([*arguments, "init", "--account-id", "111122223333"]) == 0
    out = capsys.readouterr().out
    assert "Initialised RoleCall in the store (PostgreSQL host=127.0.0.1" in out
    assert not (state / "rolecall.db").exists()
    with psycopg.connect(pg_dsn) as connection:
        rows = connection.execute("SELECT account_id FROM accounts").fetchall()
    assert rows == [("111122223333",)]
    assert main([*arguments, "init"]) == 0
    assert "already initialised in the store (PostgreSQL" in capsys.readouterr().out
    assert main([*arguments, "account", "list"]) == 0
    assert "111122223333" in capsys.readouterr().out
    assert main([*arguments, "check-config"]) == 0
    assert "store PostgreSQL host=127.0.0.1" in capsys.readouterr().out


def test_check_config_reads_the_aws_managed_policies_and_names_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, policies = tmp_path / "s", tmp_path / "aws-managed"
    init(state)
    policies.mkdir()
    (policies / "ReadOnly.json").write_text(
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}'
    )
    config = tmp_path / "controller.toml"
    config.write_text(f'[iam]\naws_managed_policies = "{policies}"\n')
    command = ["--config", str(config), "--state-dir", str(state), "check-config"]
    capsys.readouterr()
    assert main(command) == 0
    assert ", AWS-managed policies 1\n" in capsys.readouterr().out
    (policies / "Broken.json").write_text('{"Statement": []}')
    assert main(command) == 1
    error = capsys.readouterr().err
    assert error.startswith("rolecall-controller: iam.aws_managed_policies: ")
    assert "Broken.json" in error
