"""euca-run-instances, euca-describe-instances and euca-terminate-instances, and the key pair
tools, against a real controller, after the original three lines, as an operator types them."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ACCOUNT_ID, BIN, Controller
from tests.e2e.test_tools import failed, ok


@pytest.fixture(scope="module")
def enrolled(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> str:
    out: Path = tmp_path_factory.mktemp("node")
    subprocess.run(
        [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "enroll-node",
         "hv-euca", "--out", out],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ok(controller, "iam-rolecreate -r eucarole -s ec2.amazonaws.com")
    ok(controller, "iam-roleaddpolicy -r eucarole -e Allow -a s3:\\* -c \\* -p s3star -o")
    ok(controller, "iam-instanceprofilecreate -s eucarole -r eucarole")
    return "hv-euca"


def instance_lines(output: str) -> list[list[str]]:
    return [line.split("\t") for line in output.splitlines() if line.startswith("INSTANCE")]


def test_run_instances_with_a_profile_by_name_gives_every_instance_the_profile(
    controller: Controller, enrolled: str
) -> None:
    output = ok(controller, "euca-run-instances emi-12345678 -n 2 -t m1.small -p eucarole")
    instances = instance_lines(output)
    assert output.startswith("RESERVATION")
    assert len(instances) == 2
    arn = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/eucarole"
    for fields in instances:
        assert fields[1].startswith("i-")
        assert arn in fields


def test_run_instances_with_a_profile_by_arn_then_describe_and_terminate(
    controller: Controller, enrolled: str
) -> None:
    arn = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/eucarole"
    instance_id = instance_lines(
        ok(controller, f"euca-run-instances emi-12345678 --iam-profile {arn}")
    )[0][1]
    described = instance_lines(ok(controller, f"euca-describe-instances {instance_id}"))
    assert [fields[1] for fields in described] == [instance_id]
    assert arn in described[0]
    terminated = ok(controller, f"euca-terminate-instances {instance_id}")
    assert terminated.split() == ["INSTANCE", instance_id, "pending", "terminated"]


def test_an_unknown_profile_is_one_line_with_ec2s_code(
    controller: Controller, enrolled: str
) -> None:
    line = failed(controller, "euca-run-instances emi-12345678 -p no-such-profile")
    assert "InvalidParameterValue" in line and "no-such-profile" in line


# Key pairs (issue 12)


def test_create_keypair_writes_a_key_ssh_keygen_reads_and_launches_with_it(
    controller: Controller, enrolled: str, tmp_path: Path
) -> None:
    path = tmp_path / "eucakey.pem"
    line = ok(controller, f"euca-create-keypair eucakey -t ed25519 -f {path}")
    kind, name, fingerprint = line.rstrip("\n").split("\t")
    assert (kind, name) == ("KEYPAIR", "eucakey")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-f", path], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    assert fingerprint.rstrip("=") == shown.removeprefix("SHA256:")
    assert ok(controller, "euca-describe-keypairs eucakey") == line
    instance = instance_lines(ok(controller, "euca-run-instances emi-12345678 -k eucakey"))[0]
    assert instance[6] == "eucakey"  # euca2ools' key name column
    described = instance_lines(ok(controller, f"euca-describe-instances {instance[1]}"))
    assert described[0][6] == "eucakey"
    assert ok(controller, "euca-delete-keypair eucakey") == "KEYPAIR\teucakey\n"
    gone = failed(controller, "euca-describe-keypairs eucakey")
    assert gone == (
        "euca-describe-keypairs: InvalidKeyPair.NotFound: The key pair 'eucakey' does not exist\n"
    )


def test_create_keypair_without_a_file_prints_the_private_key(controller: Controller) -> None:
    output = ok(controller, "euca-create-keypair eucaprinted")
    header, *key = output.splitlines()
    assert header.startswith("KEYPAIR\teucaprinted\t")
    assert key[0] == "-----BEGIN RSA PRIVATE KEY-----"
    assert key[-1] == "-----END RSA PRIVATE KEY-----"
    ok(controller, "euca-delete-keypair eucaprinted")


def test_import_keypair_takes_an_ssh_keygen_public_key(
    controller: Controller, tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True, timeout=30
    )
    output = ok(controller, f"euca-import-keypair eucaimported --public-key-file {key}.pub")
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{key}.pub"], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    kind, name, fingerprint = output.rstrip("\n").split("\t")
    assert (kind, name) == ("KEYPAIR", "eucaimported")
    assert fingerprint.rstrip("=") == shown.removeprefix("SHA256:")
    listed = ok(controller, "euca-describe-keypairs -F key-type=ed25519")
    assert output in listed
    duplicate = failed(controller, f"euca-import-keypair eucaimported -f {key}.pub")
    assert "InvalidKeyPair.Duplicate" in duplicate and duplicate.count("\n") == 1
    bad_flag = failed(controller, f"euca-import-keypair other --public-key {key}.pub")
    assert "--public-key" in bad_flag and bad_flag.count("\n") == 1


def test_run_instances_with_an_unknown_key_is_one_line_with_ec2s_code(
    controller: Controller, enrolled: str
) -> None:
    line = failed(controller, "euca-run-instances emi-12345678 -k no-such-key")
    assert line == (
        "euca-run-instances: InvalidKeyPair.NotFound: The key pair 'no-such-key' does not exist\n"
    )


# Moving an instance (issue 13)


def test_modify_instance_placement_moves_an_instance_and_names_a_bad_node(
    controller: Controller, enrolled: str, tmp_path: Path
) -> None:
    subprocess.run(
        [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "enroll-node",
         "hv-euca-2", "--out", tmp_path],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    instance_id = instance_lines(
        ok(controller, f"euca-run-instances emi-12345678 --placement {enrolled}")
    )[0][1]
    moved = ok(controller, f"euca-modify-instance-placement {instance_id} --host-id hv-euca-2")
    assert moved == f"INSTANCE\t{instance_id}\thv-euca-2\n"
    ec2 = controller.client("ec2")
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
    assert described["Instances"][0]["Placement"]["HostId"] == "hv-euca-2"
    line = failed(controller, f"euca-modify-instance-placement {instance_id} --host-id nowhere")
    assert line == (
        "euca-modify-instance-placement: InvalidParameterValue: Value (nowhere) for parameter"
        " hostId is invalid. No enrolled node has that name.\n"
    )
