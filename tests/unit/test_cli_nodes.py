"""The node commands of ``rolecall-controller``: the CA made by ``init``, ``enroll-node``,
``retire-node`` and ``nodes``."""

from __future__ import annotations

import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from controller.cli import main
from controller.nodeca import server_certificate_names, verify_node_certificate
from controller.store.records import Instance, Node
from controller.store.sqlite import SQLiteStore

ACCOUNT = "111122223333"
STATE_FILES = ("node-ca.key", "node-ca.pem", "node-api.key", "node-api.pem")


def run(state: Path, *arguments: str) -> int:
    return main(["--state-dir", str(state), *arguments])


@pytest.fixture
def state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """An initialised state directory (init's output already read)."""
    directory = tmp_path / "state"
    assert run(directory, "init", "--account-id", ACCOUNT) == 0
    capsys.readouterr()
    return directory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def stored_node(state: Path, name: str) -> Node | None:
    store = SQLiteStore(state / "rolecall.db")
    try:
        with store.transaction() as tx:
            return tx.get_node(name)
    finally:
        store.close()


def enroll(state: Path, name: str, out: Path, *extra: str) -> int:
    return run(state, "enroll-node", name, "--out", str(out), *extra)


# --- init -------------------------------------------------------------------------------------


def test_init_creates_the_node_ca_and_the_node_api_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert run(state, "init") == 0
    out = capsys.readouterr().out
    assert str(state / "node-ca.pem") in out
    assert mode(state / "node-ca.key") == 0o600
    assert mode(state / "node-api.key") == 0o600
    assert mode(state / "node-ca.pem") & 0o022 == 0
    ca = x509.load_pem_x509_certificate((state / "node-ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((state / "node-api.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server_certificate_names((state / "node-api.pem").read_bytes())
    assert names[:2] == ["localhost", "127.0.0.1"]


def test_running_init_twice_keeps_the_ca_and_server_certificate_byte_for_byte(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {name: (state / name).read_bytes() for name in STATE_FILES}
    assert run(state, "init") == 0
    assert {name: (state / name).read_bytes() for name in STATE_FILES} == before
    out = capsys.readouterr().out
    assert "nothing was changed" in out
    assert str(state / "node-ca.pem") in out


def test_init_puts_the_node_api_names_given_in_the_server_certificate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    arguments = ["--node-api-name", "controller.example", "--node-api-name", "10.0.0.5"]
    assert run(state, "init", *arguments) == 0
    names = server_certificate_names((state / "node-api.pem").read_bytes())
    assert names == ["controller.example", "10.0.0.5"]


def test_init_refuses_a_bad_node_api_name_naming_the_flag_before_creating_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path / "state", "init", "--node-api-name", "Bad_Name") == 1
    assert "--node-api-name must be" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_init_again_with_a_name_the_server_certificate_lacks_says_how_to_reissue_it(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (state / "node-api.pem").read_bytes()
    assert run(state, "init", "--node-api-name", "controller.example") == 1
    err = capsys.readouterr().err
    assert "controller.example" in err and "not changed" in err and "node-api.key" in err
    assert (state / "node-api.pem").read_bytes() == before


def test_init_adds_a_missing_ca_to_an_initialised_state_directory(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials = (state / "root-credentials").read_bytes()
    for name in STATE_FILES:
        (state / name).unlink()
    assert run(state, "init") == 0
    assert "added the node CA and the node API certificate" in capsys.readouterr().out
    assert all((state / name).exists() for name in STATE_FILES)
    assert (state / "root-credentials").read_bytes() == credentials


def test_init_refuses_a_ca_key_without_its_certificate_and_keeps_the_key(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = (state / "node-ca.key").read_bytes()
    (state / "node-ca.pem").unlink()
    assert run(state, "init") == 1
    err = capsys.readouterr().err
    assert "node-ca.key exists but" in err and "node-ca.pem does not" in err
    assert (state / "node-ca.key").read_bytes() == key
    assert not (state / "node-ca.pem").exists()


# --- enroll-node ------------------------------------------------------------------------------


def test_enroll_node_writes_key_certificate_and_ca_and_records_the_node(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "hv1-files"
    assert enroll(state, "hv1", out_dir) == 0
    assert mode(out_dir / "node.key") == 0o600
    assert mode(out_dir / "node.pem") & 0o022 == 0
    assert mode(out_dir / "ca.pem") & 0o022 == 0
    assert (out_dir / "ca.pem").read_bytes() == (state / "node-ca.pem").read_bytes()
    cert_pem = (out_dir / "node.pem").read_bytes()
    assert verify_node_certificate(cert_pem, (state / "node-ca.pem").read_bytes(), now()) == "hv1"
    node = stored_node(state, "hv1")
    assert node is not None
    serial = f"{x509.load_pem_x509_certificate(cert_pem).serial_number:040x}"
    assert node.certificate_serial == serial
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", node.enrolled)
    assert (node.retired, node.last_contact, node.revision) == (None, None, 0)
    out = capsys.readouterr().out
    for name in ("node.key", "node.pem", "ca.pem"):
        assert str((out_dir / name).resolve()) in out
    assert serial in out
    assert re.search(r'urls = \["https://[^"]+:8775"\]', out)


def test_the_key_is_not_printed(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enroll(state, "hv1", tmp_path / "out")
    key_body = (tmp_path / "out" / "node.key").read_text().splitlines()[1]
    assert key_body not in capsys.readouterr().out


def test_enroll_node_refuses_an_enrolled_name_and_changes_nothing(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enroll(state, "hv1", tmp_path / "first")
    before = stored_node(state, "hv1")
    assert enroll(state, "hv1", tmp_path / "second") == 1
    err = capsys.readouterr().err
    assert "node hv1 is enrolled already" in err and "--force" in err
    assert stored_node(state, "hv1") == before
    assert not (tmp_path / "second").exists()


@pytest.mark.parametrize("name", ["HV1", "hv_1", ".hv", "a" * 64, ""])
def test_enroll_node_refuses_a_bad_name_naming_the_argument(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert enroll(state, name, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("rolecall-controller: NAME must be a node name")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_enroll_node_with_force_issues_a_new_certificate_and_records_its_serial(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    enroll(state, "hv1", out_dir)
    old = stored_node(state, "hv1")
    old_key = (out_dir / "node.key").read_bytes()
    capsys.readouterr()
    assert enroll(state, "hv1", out_dir, "--force") == 0
    new = stored_node(state, "hv1")
    assert old is not None and new is not None
    assert new.certificate_serial != old.certificate_serial
    assert (new.enrolled, new.revision, new.retired) == (old.enrolled, old.revision, None)
    assert (out_dir / "node.key").read_bytes() != old_key
    assert mode(out_dir / "node.key") == 0o600
    new_cert = x509.load_pem_x509_certificate((out_dir / "node.pem").read_bytes())
    assert f"{new_cert.serial_number:040x}" == new.certificate_serial
    out = capsys.readouterr().out
    assert old.certificate_serial in out and "refused from now on" in out


def test_enroll_node_refuses_to_overwrite_files_in_the_out_directory(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "shared"
    enroll(state, "hv1", out_dir)
    key = (out_dir / "node.key").read_bytes()
    assert enroll(state, "hv2", out_dir) == 1
    assert "exist already" in capsys.readouterr().err
    assert (out_dir / "node.key").read_bytes() == key
    assert stored_node(state, "hv2") is None


def test_a_retired_node_can_be_enrolled_again_and_keeps_its_revision(
    state: Path, tmp_path: Path
) -> None:
    enroll(state, "hv1", tmp_path / "first")
    store = SQLiteStore(state / "rolecall.db")
    try:
        with store.transaction() as tx:
            tx.bump_node_revision("hv1")
    finally:
        store.close()
    run(state, "retire-node", "hv1")
    retired = stored_node(state, "hv1")
    assert retired is not None and retired.retired is not None
    assert enroll(state, "hv1", tmp_path / "second") == 0
    again = stored_node(state, "hv1")
    assert again is not None
    assert again.retired is None
    assert again.revision == 1
    assert again.certificate_serial != retired.certificate_serial


def test_enroll_node_needs_an_initialised_state_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert enroll(tmp_path / "none", "hv1", tmp_path / "out") == 1
    assert "is not initialised" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_enroll_node_without_a_ca_says_to_run_init(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (state / "node-ca.key").unlink()
    assert enroll(state, "hv1", tmp_path / "out") == 1
    assert "has no node CA" in capsys.readouterr().err
    assert stored_node(state, "hv1") is None


# --- retire-node and nodes --------------------------------------------------------------------


def test_retire_node_marks_it_retired(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enroll(state, "hv1", tmp_path / "out")
    capsys.readouterr()
    assert run(state, "retire-node", "hv1") == 0
    node = stored_node(state, "hv1")
    assert node is not None and node.retired is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", node.retired)
    assert "Retired node hv1" in capsys.readouterr().out


def test_retiring_a_retired_node_changes_nothing(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enroll(state, "hv1", tmp_path / "out")
    run(state, "retire-node", "hv1")
    before = stored_node(state, "hv1")
    capsys.readouterr()
    assert run(state, "retire-node", "hv1") == 0
    assert stored_node(state, "hv1") == before
    assert "retired already" in capsys.readouterr().out


def test_retire_node_refuses_an_unknown_node(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(state, "retire-node", "ghost") == 1
    assert "there is no node ghost" in capsys.readouterr().err


def place(state: Path, instance_id: str, node_name: str, instance_state: str) -> None:
    store = SQLiteStore(state / "rolecall.db")
    try:
        with store.transaction() as tx:
            tx.insert_instance(
                Instance(
                    instance_id=instance_id,
                    account_id=ACCOUNT,
                    reservation_id="r-0123456789abcdef0",
                    image_id="ami-12345678",
                    instance_type="t3.micro",
                    node_name=node_name,
                    netns=f"rc-{instance_id}",
                    state=instance_state,
                    launched="2025-03-01T12:00:00Z",
                    terminated="2025-03-01T13:00:00Z" if instance_state == "terminated" else None,
                    private_ip="169.254.10.2",
                    http_tokens="optional",
                    hop_limit=1,
                    http_endpoint="enabled",
                    association_id=None,
                    association_state=None,
                    profile_id=None,
                    launch_index=0,
                )
            )
    finally:
        store.close()


def test_nodes_lists_state_instance_counts_and_last_contact(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enroll(state, "hv1", tmp_path / "one")
    enroll(state, "hv2", tmp_path / "two")
    enroll(state, "hv3", tmp_path / "three")
    run(
        state,
        "enroll-node",
        "hv3",
        "--out",
        str(tmp_path / "three"),
        "--force",
        "--subnet",
        "10.3.0.0/24",
    )
    place(state, "i-00000000000000001", "hv1", "running")
    place(state, "i-00000000000000002", "hv1", "pending")
    place(state, "i-00000000000000003", "hv1", "terminated")
    place(state, "i-00000000000000004", "hv2", "terminated")
    store = SQLiteStore(state / "rolecall.db")
    try:
        with store.transaction() as tx:
            hv2 = tx.get_node("hv2")
            assert hv2 is not None
            tx.update_node(Node(**{**hv2.__dict__, "last_contact": "2025-03-02T08:30:00Z"}))
    finally:
        store.close()
    run(state, "retire-node", "hv3")
    capsys.readouterr()
    assert run(state, "nodes") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAME", "STATE", "INSTANCES", "CAPACITY", "SUBNET", "LAST", "CONTACT", "ENROLLED"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["hv1"][1:6] == ["active", "2", "1000", "169.254.0.0/16", "never"]
    assert rows["hv2"][1:6] == ["active", "0", "1000", "169.254.0.0/16", "2025-03-02T08:30:00Z"]
    assert rows["hv3"][1:6] == ["retired", "0", "1000", "10.3.0.0/24", "never"]
    enrolled = stored_node(state, "hv1")
    assert enrolled is not None and rows["hv1"][6] == enrolled.enrolled
    # The columns line up under their headings.
    assert lines[1].index("active") == lines[0].index("STATE")
    assert lines[1].index("never") == lines[0].index("LAST CONTACT")


def test_a_subnet_that_is_not_an_ipv4_block_names_the_flag(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("10.0.0.0/8", "10.0.0.1/24", "fd00::/64", "ten"):
        with pytest.raises(SystemExit):
            run(state, "enroll-node", "hv9", "--out", str(tmp_path / "x"), "--subnet", bad)
        assert "--subnet" in capsys.readouterr().err
    assert stored_node(state, "hv9") is None


def test_nodes_with_none_enrolled_says_how_to_enroll_one(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(state, "nodes") == 0
    assert "enroll-node NAME --out DIR" in capsys.readouterr().out


def test_retiring_a_node_with_instances_says_how_many_remain(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enroll(state, "hv1", tmp_path / "out")
    place(state, "i-00000000000000001", "hv1", "running")
    capsys.readouterr()
    assert run(state, "retire-node", "hv1") == 0
    assert "1 instance(s) not terminated" in capsys.readouterr().out


def now() -> datetime:
    return datetime.now(UTC)


def test_enroll_node_without_a_node_api_certificate_says_to_run_init(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (state / "node-api.pem").unlink()
    assert enroll(state, "hv1", tmp_path / "out") == 1
    assert "has no node API certificate" in capsys.readouterr().err
    assert stored_node(state, "hv1") is None


def test_enroll_node_records_the_capacity_given(state: Path, tmp_path: Path) -> None:
    assert enroll(state, "hv1", tmp_path / "one", "--capacity", "40") == 0
    assert enroll(state, "hv2", tmp_path / "two") == 0
    one, two = stored_node(state, "hv1"), stored_node(state, "hv2")
    assert one is not None and two is not None
    assert (one.capacity, two.capacity) == (40, None)


def test_enroll_node_with_force_changes_the_capacity_or_keeps_it(
    state: Path, tmp_path: Path
) -> None:
    enroll(state, "hv1", tmp_path / "one", "--capacity", "40")
    enroll(state, "hv1", tmp_path / "one", "--force")
    kept = stored_node(state, "hv1")
    assert kept is not None and kept.capacity == 40
    enroll(state, "hv1", tmp_path / "one", "--force", "--capacity", "5")
    changed = stored_node(state, "hv1")
    assert changed is not None and changed.capacity == 5


@pytest.mark.parametrize("capacity", ["0", "-3", "many", "100001"])
def test_enroll_node_refuses_a_capacity_out_of_range(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], capacity: str
) -> None:
    with pytest.raises(SystemExit):
        enroll(state, "hv1", tmp_path / "one", "--capacity", capacity)
    assert "--capacity: must be a number of instances from 1 to 100000" in capsys.readouterr().err
    assert stored_node(state, "hv1") is None


def test_enroll_prints_the_url_the_node_api_is_configured_to_serve_and_what_to_change(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17, item 8: not https://<hostname>:8775 when the node API listens on loopback."""
    assert enroll(state, "hv1", tmp_path / "default") == 0
    out = capsys.readouterr().out
    assert 'urls = ["https://127.0.0.1:8775"]' in out
    assert "Before that works: the node API listens on 127.0.0.1:8775 (node_api.host)" in out
    every = tmp_path / "every.toml"
    every.write_text('[node_api]\nhost = "0.0.0.0"\nport = 9443\n')
    assert main(["--config", str(every), "--state-dir", str(state), "enroll-node", "hv2",
                 "--out", str(tmp_path / "every")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    names = server_certificate_names((state / "node-api.pem").read_bytes())
    outside = next(name for name in names if name not in ("localhost", "127.0.0.1", "::1"))
    assert f'urls = ["https://{outside}:9443"]' in out
    assert "Before that works" not in out
    one = tmp_path / "one.toml"
    one.write_text('[node_api]\nhost = "192.0.2.10"\n')
    assert main(["--config", str(one), "--state-dir", str(state), "enroll-node", "hv3",
                 "--out", str(tmp_path / "one")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert 'urls = ["https://192.0.2.10:8775"]' in out
    assert "the node API certificate does not name 192.0.2.10" in out
    assert "init --node-api-name 192.0.2.10" in out
