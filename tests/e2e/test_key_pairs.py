"""EC2 key pairs through boto3 against a real controller process: each action, each error, the
fingerprints held against what OpenSSH's ssh-keygen computes from the same keys, the private key
CreateKeyPair returns (it loads, it matches what is kept, and it is in neither the store's files
nor the controller's log), and RunInstances with KeyName."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.e2e.conftest import ACCOUNT_ID, Controller, start_controller, stop_controller
from tests.e2e.test_ec2 import add_node, ec2_user, error_of, unique

#: Every private key CreateKeyPair returned in this module, to look for afterwards.
CREATED_PRIVATE_KEYS: list[str] = []


def ssh_keygen(*arguments: str | Path) -> str:
    return subprocess.run(
        ["ssh-keygen", *map(str, arguments)], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ssh-keygen's keys: rsa (3,072 bits, its default), ed25519, and a 1,024-bit rsa."""
    directory = tmp_path_factory.mktemp("keys")
    for name, kind in [
        ("rsa", ["-t", "rsa", "-b", "3072"]),
        ("ed25519", ["-t", "ed25519"]),
        ("rsa1024", ["-t", "rsa", "-b", "1024"]),
    ]:
        ssh_keygen(*kind, "-q", "-N", "", "-C", "someone@laptop", "-f", directory / name)
    return directory


@pytest.fixture(scope="module")
def nodes(controller: Controller) -> Iterator[None]:
    add_node(controller.state_dir, "node-keys")
    yield
    log = "".join(controller.output)
    for private_key in CREATED_PRIVATE_KEYS:
        for line in private_key.splitlines()[1:-1]:
            assert line not in log, "a private key reached the controller's log"


@pytest.fixture
def ec2(controller: Controller, nodes: None) -> Any:
    return controller.client("ec2")


def created(ec2: Any, name: str, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = ec2.create_key_pair(KeyName=name, **params)
    CREATED_PRIVATE_KEYS.append(answer["KeyMaterial"])
    return answer


def described(ec2: Any, **params: Any) -> list[dict[str, Any]]:
    key_pairs: list[dict[str, Any]] = ec2.describe_key_pairs(**params)["KeyPairs"]
    return key_pairs


def sha256_as_ec2_shows(ssh_keygen_output: str) -> str:
    """``256 SHA256:abc… comment (ED25519)`` -> ``abc…=``: no prefix, base64 padded."""
    digest = ssh_keygen_output.split()[1].removeprefix("SHA256:")
    return digest + "=" * (-len(digest) % 4)


def colon_hex(digest: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in digest)


def pem_body(pem: str) -> bytes:
    return base64.b64decode("".join(pem.strip().splitlines()[1:-1]))


# ImportKeyPair


def test_an_imported_rsa_key_has_ec2s_fingerprint_md5_of_its_der_public_key(
    ec2: Any, keys: Path
) -> None:
    name = unique("rsa")
    answer = ec2.import_key_pair(KeyName=name, PublicKeyMaterial=(keys / "rsa.pub").read_bytes())
    assert answer["KeyName"] == name
    assert answer["KeyPairId"].startswith("key-") and len(answer["KeyPairId"]) == 21
    # EC2's documented check: ssh-keygen -e -m PKCS8 | openssl pkey -pubin -outform DER | md5
    spki = pem_body(ssh_keygen("-e", "-m", "PKCS8", "-f", keys / "rsa.pub"))
    assert answer["KeyFingerprint"] == colon_hex(hashlib.md5(spki, usedforsecurity=False).digest())
    blob_md5 = ssh_keygen("-l", "-E", "md5", "-f", keys / "rsa.pub").split()[1]
    assert answer["KeyFingerprint"] != blob_md5.removeprefix("MD5:")  # not RFC 4716's, as in EC2
    (item,) = described(ec2, KeyNames=[name])
    assert (item["KeyType"], item["KeyFingerprint"]) == ("rsa", answer["KeyFingerprint"])


def test_an_imported_ed25519_key_has_ssh_keygens_sha256_fingerprint(ec2: Any, keys: Path) -> None:
    name = unique("ed")
    answer = ec2.import_key_pair(
        KeyName=name, PublicKeyMaterial=(keys / "ed25519.pub").read_bytes()
    )
    fingerprint = sha256_as_ec2_shows(ssh_keygen("-l", "-f", keys / "ed25519.pub"))
    assert answer["KeyFingerprint"] == fingerprint
    (item,) = described(ec2, KeyNames=[name], IncludePublicKey=True)
    kind, body, _comment = (keys / "ed25519.pub").read_text().split()
    assert item["PublicKey"] == f"{kind} {body} {name}"
    assert item["KeyType"] == "ed25519"


def test_importing_a_taken_name_is_invalid_key_pair_duplicate(ec2: Any, keys: Path) -> None:
    name = unique("dup")
    material = (keys / "ed25519.pub").read_bytes()
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=material)
    assert error_of(ec2.import_key_pair, KeyName=name, PublicKeyMaterial=material) == (
        "InvalidKeyPair.Duplicate",
        400,
        f"The keypair '{name}' already exists.",
    )
    assert error_of(ec2.create_key_pair, KeyName=name)[0] == "InvalidKeyPair.Duplicate"


@pytest.mark.parametrize(
    ("material", "reason"),
    [
        (b"garbage", "expected an OpenSSH public key"),
        (b"ssh-rsa AAAAB3NzaC1yc2E", "does not decode"),
        (b"", "empty"),
    ],
)
def test_material_that_is_no_key_is_invalid_key_pair_format_with_the_reason(
    ec2: Any, material: bytes, reason: str
) -> None:
    code, status, message = error_of(
        ec2.import_key_pair, KeyName=unique("bad"), PublicKeyMaterial=material
    )
    assert (code, status) == ("InvalidKeyPair.Format", 400)
    assert message.startswith("Key is not in valid OpenSSH public key format")
    assert reason in message


def test_a_1024_bit_rsa_key_is_refused_naming_the_sizes_taken(ec2: Any, keys: Path) -> None:
    code, _, message = error_of(
        ec2.import_key_pair,
        KeyName=unique("small"),
        PublicKeyMaterial=(keys / "rsa1024.pub").read_bytes(),
    )
    assert code == "InvalidKeyPair.Format"
    assert "1024 bits; RoleCall takes 2048 to 4096 bits" in message


def test_a_key_name_over_255_characters_is_invalid_parameter_value(ec2: Any, keys: Path) -> None:
    code, status, message = error_of(
        ec2.import_key_pair,
        KeyName="k" * 256,
        PublicKeyMaterial=(keys / "ed25519.pub").read_bytes(),
    )
    assert (code, status) == ("InvalidParameterValue", 400)
    assert "for parameter KeyName is invalid" in message


def test_import_with_dry_run_says_it_would_have_succeeded_and_keeps_nothing(
    ec2: Any, keys: Path
) -> None:
    name = unique("dry")
    code, status, _ = error_of(
        ec2.import_key_pair,
        KeyName=name,
        PublicKeyMaterial=(keys / "ed25519.pub").read_bytes(),
        DryRun=True,
    )
    assert (code, status) == ("DryRunOperation", 412)
    assert error_of(ec2.describe_key_pairs, KeyNames=[name])[0] == "InvalidKeyPair.NotFound"


def test_tags_given_at_import_are_described_and_filtered_on(ec2: Any, keys: Path) -> None:
    name, team = unique("tagged"), unique("team")
    answer = ec2.import_key_pair(
        KeyName=name,
        PublicKeyMaterial=(keys / "ed25519.pub").read_bytes(),
        TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": team}]}],
    )
    assert answer["Tags"] == [{"Key": "team", "Value": team}]
    (item,) = described(ec2, Filters=[{"Name": "tag:team", "Values": [team]}])
    assert (item["KeyName"], item["Tags"]) == (name, [{"Key": "team", "Value": team}])


# CreateKeyPair


def test_a_created_rsa_key_loads_matches_what_is_kept_and_has_ec2s_fingerprint(
    ec2: Any, tmp_path: Path
) -> None:
    name = unique("made-rsa")
    answer = created(ec2, name)
    assert answer["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    private = serialization.load_pem_private_key(answer["KeyMaterial"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    (item,) = described(ec2, KeyPairIds=[answer["KeyPairId"]], IncludePublicKey=True)
    ours = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert item["PublicKey"] == f"{ours.decode()} {name}"
    # EC2's documented check: the SHA-1 of the key as DER PKCS#8, which ssh-keygen converts to.
    path = tmp_path / "made.pem"
    path.write_text(answer["KeyMaterial"])
    path.chmod(0o600)
    assert ssh_keygen("-y", "-f", path).split()[:2] == item["PublicKey"].split()[:2]
    ssh_keygen("-p", "-q", "-P", "", "-N", "", "-m", "PKCS8", "-f", path)
    pkcs8 = pem_body(path.read_text())
    assert answer["KeyFingerprint"] == colon_hex(
        hashlib.sha1(pkcs8, usedforsecurity=False).digest()
    )
    assert item["KeyFingerprint"] == answer["KeyFingerprint"]


def test_a_created_ed25519_key_is_one_ssh_keygen_reads_with_the_same_fingerprint(
    ec2: Any, tmp_path: Path
) -> None:
    name = unique("made-ed")
    answer = created(ec2, name, KeyType="ed25519")
    private = serialization.load_ssh_private_key(answer["KeyMaterial"].encode(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    path = tmp_path / "made"
    path.write_text(answer["KeyMaterial"])
    path.chmod(0o600)
    assert answer["KeyFingerprint"] == sha256_as_ec2_shows(ssh_keygen("-l", "-f", path))
    (item,) = described(ec2, KeyNames=[name], IncludePublicKey=True)
    assert item["PublicKey"].split()[:2] == ssh_keygen("-y", "-f", path).split()[:2]
    assert item["KeyType"] == "ed25519"


def test_a_created_private_key_is_in_neither_the_stores_files_nor_the_log(
    ec2: Any, controller: Controller
) -> None:
    name = unique("secret")
    answer = created(ec2, name, KeyType="ed25519")
    body_lines = answer["KeyMaterial"].strip().splitlines()[1:-1]
    files = sorted(controller.state_dir.glob("rolecall.db*"))
    on_disk = b"".join(path.read_bytes() for path in files)
    assert name.encode() in on_disk, f"the key pair is not in {files}"
    assert [line for line in body_lines if line.encode() in on_disk] == []
    log = "".join(controller.output)
    assert [line for line in body_lines if line in log] == []


def test_ppk_is_refused_with_how_to_convert(ec2: Any) -> None:
    code, status, message = error_of(ec2.create_key_pair, KeyName=unique("ppk"), KeyFormat="ppk")
    assert (code, status) == ("InvalidParameterValue", 400)
    assert "puttygen" in message


def test_create_with_dry_run_says_it_would_have_succeeded(ec2: Any) -> None:
    code, status, _ = error_of(ec2.create_key_pair, KeyName=unique("dry"), DryRun=True)
    assert (code, status) == ("DryRunOperation", 412)


# DescribeKeyPairs and DeleteKeyPair


def test_describe_by_name_id_and_filters(ec2: Any, keys: Path) -> None:
    first, second = unique("first"), unique("second")
    one = ec2.import_key_pair(KeyName=first, PublicKeyMaterial=(keys / "rsa.pub").read_bytes())
    two = created(ec2, second, KeyType="ed25519")
    everything = {item["KeyName"] for item in described(ec2)}
    assert {first, second} <= everything
    by_id = described(ec2, KeyPairIds=[two["KeyPairId"]], KeyNames=[first])
    assert [item["KeyName"] for item in by_id] == sorted([first, second])
    assert all("PublicKey" not in item for item in by_id)
    assert all(item["CreateTime"].tzinfo is not None for item in by_id)
    for filters, expected in [
        ([{"Name": "key-name", "Values": [first]}], [first]),
        ([{"Name": "fingerprint", "Values": [two["KeyFingerprint"]]}], [second]),
        ([{"Name": "key-pair-id", "Values": [one["KeyPairId"]]}], [first]),
        (
            [
                {"Name": "key-type", "Values": ["ed25519"]},
                {"Name": "key-name", "Values": [first, second]},
            ],
            [second],
        ),
    ]:
        assert [item["KeyName"] for item in described(ec2, Filters=filters)] == expected


def test_describing_an_unknown_name_or_id_is_invalid_key_pair_not_found(ec2: Any) -> None:
    assert error_of(ec2.describe_key_pairs, KeyNames=["no-such-key"]) == (
        "InvalidKeyPair.NotFound",
        400,
        "The key pair 'no-such-key' does not exist",
    )
    assert error_of(ec2.describe_key_pairs, KeyPairIds=["key-0123456789abcdef0"]) == (
        "InvalidKeyPair.NotFound",
        400,
        "The key pair ID 'key-0123456789abcdef0' does not exist",
    )


def test_an_unknown_filter_is_invalid_parameter_value(ec2: Any) -> None:
    code, _, message = error_of(
        ec2.describe_key_pairs, Filters=[{"Name": "owner-id", "Values": ["x"]}]
    )
    assert (code, message) == ("InvalidParameterValue", "The filter 'owner-id' is invalid")


def test_delete_by_name_and_by_id_and_an_unknown_name_succeeds(ec2: Any, keys: Path) -> None:
    by_name, by_id = unique("del-name"), unique("del-id")
    material = (keys / "ed25519.pub").read_bytes()
    ec2.import_key_pair(KeyName=by_name, PublicKeyMaterial=material)
    made = ec2.import_key_pair(KeyName=by_id, PublicKeyMaterial=material)
    assert ec2.delete_key_pair(KeyName=by_name)["Return"] is True
    assert ec2.delete_key_pair(KeyPairId=made["KeyPairId"])["KeyPairId"] == made["KeyPairId"]
    for name in (by_name, by_id):
        assert error_of(ec2.describe_key_pairs, KeyNames=[name])[0] == "InvalidKeyPair.NotFound"
    assert ec2.delete_key_pair(KeyName=unique("never-was"))["Return"] is True


def test_delete_with_dry_run_deletes_nothing(ec2: Any, keys: Path) -> None:
    name = unique("kept")
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=(keys / "ed25519.pub").read_bytes())
    assert error_of(ec2.delete_key_pair, KeyName=name, DryRun=True)[:2] == (
        "DryRunOperation",
        412,
    )
    assert [item["KeyName"] for item in described(ec2, KeyNames=[name])] == [name]


# Authorization


def test_a_deny_on_a_key_pair_refuses_importing_deleting_and_launching_with_it(
    controller: Controller, ec2: Any, iam: Any, keys: Path
) -> None:
    guarded = unique("guarded")
    arn = f"arn:aws:ec2:us-east-1:{ACCOUNT_ID}:key-pair/{guarded}"
    material = (keys / "ed25519.pub").read_bytes()
    deny = {"Effect": "Deny", "Action": "ec2:*", "Resource": arn}
    as_user = ec2_user(controller, iam, "keyholder", deny)
    code, status, message = error_of(
        as_user.import_key_pair, KeyName=guarded, PublicKeyMaterial=material
    )
    assert (code, status) == ("UnauthorizedOperation", 403)
    assert "ec2:ImportKeyPair" in message and arn in message
    made = ec2.import_key_pair(KeyName=guarded, PublicKeyMaterial=material)
    assert error_of(as_user.delete_key_pair, KeyPairId=made["KeyPairId"])[0] == (
        "UnauthorizedOperation"
    )
    code, _, message = error_of(
        as_user.run_instances, ImageId="emi-1", MinCount=1, MaxCount=1, KeyName=guarded
    )
    assert code == "UnauthorizedOperation" and arn in message
    other = unique("allowed")
    as_user.import_key_pair(KeyName=other, PublicKeyMaterial=material)
    launched = as_user.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1, KeyName=other)
    assert launched["Instances"][0]["KeyName"] == other


# RunInstances


def test_run_instances_with_a_key_name_shows_it_and_keeps_it_after_deletion(
    ec2: Any, keys: Path, controller: Controller
) -> None:
    name = unique("launch")
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=(keys / "ed25519.pub").read_bytes())
    launched = ec2.run_instances(ImageId="emi-1", MinCount=2, MaxCount=2, KeyName=name)
    ids = [instance["InstanceId"] for instance in launched["Instances"]]
    assert [instance["KeyName"] for instance in launched["Instances"]] == [name, name]
    ec2.delete_key_pair(KeyName=name)
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    assert [i["KeyName"] for r in reservations for i in r["Instances"]] == [name, name]
    by_key = ec2.describe_instances(Filters=[{"Name": "key-name", "Values": [name]}])
    assert sorted(i["InstanceId"] for r in by_key["Reservations"] for i in r["Instances"]) == (
        sorted(ids)
    )


def test_run_instances_with_an_unknown_key_name_is_invalid_key_pair_not_found(ec2: Any) -> None:
    assert error_of(
        ec2.run_instances, ImageId="emi-1", MinCount=1, MaxCount=1, KeyName="no-such-key"
    ) == ("InvalidKeyPair.NotFound", 400, "The key pair 'no-such-key' does not exist")


def test_an_instance_without_a_key_name_has_none(ec2: Any) -> None:
    launched = ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1)
    assert "KeyName" not in launched["Instances"][0]


# The quota, configured


@pytest.fixture
def two_key_pairs(tmp_path: Path) -> Iterator[Controller]:
    config = tmp_path / "controller.toml"
    config.write_text("[ec2]\nmax_key_pairs_per_account = 2\n")
    running = start_controller(tmp_path / "state", config)
    try:
        yield running
    finally:
        stop_controller(running)


def test_the_configured_quota_is_key_pair_limit_exceeded(
    two_key_pairs: Controller, keys: Path
) -> None:
    ec2 = two_key_pairs.client("ec2")
    material = (keys / "ed25519.pub").read_bytes()
    ec2.import_key_pair(KeyName="one", PublicKeyMaterial=material)
    created(ec2, "two", KeyType="ed25519")
    code, status, message = error_of(
        ec2.import_key_pair, KeyName="three", PublicKeyMaterial=material
    )
    assert (code, status) == ("KeyPairLimitExceeded", 400)
    assert "ec2.max_key_pairs_per_account" in message
    ec2.delete_key_pair(KeyName="one")
    ec2.import_key_pair(KeyName="three", PublicKeyMaterial=material)
    assert [item["KeyName"] for item in described(ec2)] == ["three", "two"]
