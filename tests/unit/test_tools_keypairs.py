"""``euca-*-keypair(s)`` and ``euca-run-instances -k``: the EC2 requests they build and the lines
they print, against canned answers shaped as AWS EC2's (checked against botocore's EC2 model and
parser, as the instance tools' are), and the private key handled as a secret."""

from __future__ import annotations

import configparser
import importlib
import stat
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from botocore.validate import validate_parameters

from controller.tools import instances, keypairs
from controller.tools.command import Tool
from controller.tools.xmldata import local_name, parse_xml, result_data
from tests.unit.test_tools_client import ec2_error, run_tool
from tests.unit.test_tools_ec2 import (
    RUN,
    disagreements,
    ec2_reply,
    ok,
    sent_params,
    unknown_elements,
)

EC2_MODEL = botocore.session.get_session().get_service_model("ec2")
ROOT = Path(__file__).resolve().parents[2]
FINGERPRINT = "1f:51:ae:28:bf:89:e9:d8:1f:25:5d:37:2d:7d:b8:ca:9f:f5:f1:6f"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDjKqp5Fc65tEnRulDqKii7Gm4B+QvaJFotHYdpfRiiZQAAAIgAAAAAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"

CREATE = ec2_reply(
    "CreateKeyPair",
    f"<keyName>deploy</keyName><keyFingerprint>{FINGERPRINT}</keyFingerprint>"
    f"<keyMaterial>{PRIVATE_KEY}</keyMaterial><keyPairId>key-0123456789abcdef0</keyPairId>",
)
IMPORT = ec2_reply(
    "ImportKeyPair",
    "<keyFingerprint>z/5m5sHpHwn7ojr1TAd6Uu0Ev/gLiIZbRjz8i5vNSQU=</keyFingerprint>"
    "<keyName>laptop</keyName><keyPairId>key-0fedcba98765432100</keyPairId>",
)
DESCRIBE = ec2_reply(
    "DescribeKeyPairs",
    "<keySet>"
    f"<item><keyPairId>key-0123456789abcdef0</keyPairId><keyName>deploy</keyName>"
    f"<keyFingerprint>{FINGERPRINT}</keyFingerprint><keyType>rsa</keyType><tagSet/>"
    "<createTime>2024-05-01T12:00:00.000Z</createTime></item>"
    "<item><keyPairId>key-0fedcba98765432100</keyPairId><keyName>laptop</keyName>"
    "<keyFingerprint>z/5m5sHpHwn7ojr1TAd6Uu0Ev/gLiIZbRjz8i5vNSQU=</keyFingerprint>"
    "<keyType>ed25519</keyType><tagSet><item><key>team</key><value>web</value></item></tagSet>"
    f"<publicKey>{PUBLIC_KEY} laptop</publicKey>"
    "<createTime>2024-05-01T12:00:00.000Z</createTime></item>"
    "</keySet>",
)
DESCRIBE_EMPTY = ec2_reply("DescribeKeyPairs", "<keySet/>")
DELETE = ec2_reply(
    "DeleteKeyPair", "<return>true</return><keyPairId>key-0123456789abcdef0</keyPairId>"
)
CANNED = {
    "CreateKeyPair": [CREATE],
    "ImportKeyPair": [IMPORT],
    "DescribeKeyPairs": [DESCRIBE, DESCRIBE_EMPTY],
    "DeleteKeyPair": [DELETE],
}


@pytest.fixture
def public_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519.pub"
    path.write_text(f"{PUBLIC_KEY} me@laptop\n")
    return path


# The canned answers are AWS's shapes


@pytest.mark.parametrize(
    ("action", "body"),
    [(action, body) for action, bodies in CANNED.items() for body in bodies],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_the_canned_answers_are_in_botocores_model_and_read_as_botocore_reads_them(
    action: str, body: bytes
) -> None:
    shape = EC2_MODEL.operation_model(action).output_shape
    root = ElementTree.fromstring(body)
    wrapper = ElementTree.Element("response")
    wrapper.extend(child for child in root if local_name(child.tag) != "requestId")
    assert unknown_elements(wrapper, shape, action) == []
    theirs = create_parser("ec2").parse({"body": body, "headers": {}, "status_code": 200}, shape)
    theirs.pop("ResponseMetadata")
    parsed = parse_xml(body)
    assert parsed is not None
    assert disagreements(result_data(parsed, "ec2"), theirs, shape, action) == []


# Requests agree with botocore's EC2 serializer


SERIALIZER_CASES = [
    (keypairs.CREATE_KEYPAIR, ["deploy"], CREATE, {"KeyName": "deploy"}),
    (keypairs.CREATE_KEYPAIR, ["deploy", "-t", "ed25519"], CREATE,
     {"KeyName": "deploy", "KeyType": "ed25519"}),
    (keypairs.DESCRIBE_KEYPAIRS, ["deploy", "laptop", "-F", "key-type=rsa", "-F",
     "key-type=ed25519"], DESCRIBE,
     {"KeyNames": ["deploy", "laptop"],
      "Filters": [{"Name": "key-type", "Values": ["rsa", "ed25519"]}]}),
    (keypairs.DESCRIBE_KEYPAIRS, [], DESCRIBE, {}),
    (keypairs.DELETE_KEYPAIR, ["deploy"], DELETE, {"KeyName": "deploy"}),
    (instances.RUN_INSTANCES, ["emi-1", "-k", "deploy"], RUN,
     {"ImageId": "emi-1", "MinCount": 1, "MaxCount": 1, "KeyName": "deploy"}),
    (instances.RUN_INSTANCES, ["emi-1", "--key", "deploy"], RUN,
     {"ImageId": "emi-1", "MinCount": 1, "MaxCount": 1, "KeyName": "deploy"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tool", "argv", "reply", "arguments"),
    SERIALIZER_CASES,
    ids=["create", "create-ed25519", "describe", "describe-all", "delete", "run-k", "run-key"],
)
def test_our_requests_are_the_ones_botocore_serializes_for_the_same_call(
    tool: Tool, argv: list[str], reply: bytes, arguments: dict[str, Any]
) -> None:
    ours = sent_params(ok(tool, argv, reply))
    operation = EC2_MODEL.operation_model(ours["Action"])
    validate_parameters(arguments, operation.input_shape)
    body = create_serializer("ec2").serialize_to_request(arguments, operation)["body"]
    assert ours == {name: str(value) for name, value in body.items()}


def test_import_sends_the_files_bytes_as_botocore_sends_a_blob(public_key_file: Path) -> None:
    ours = sent_params(ok(keypairs.IMPORT_KEYPAIR, ["laptop", "-f", str(public_key_file)], IMPORT))
    arguments = {"KeyName": "laptop", "PublicKeyMaterial": public_key_file.read_bytes()}
    operation = EC2_MODEL.operation_model("ImportKeyPair")
    body = create_serializer("ec2").serialize_to_request(arguments, operation)["body"]
    assert ours == {name: str(value) for name, value in body.items()}


# euca-create-keypair


def test_create_prints_the_keypair_line_then_the_private_key() -> None:
    outcome = ok(keypairs.CREATE_KEYPAIR, ["deploy"], CREATE)
    assert outcome.stdout == f"KEYPAIR\tdeploy\t{FINGERPRINT}\n{PRIVATE_KEY}"


def test_create_with_a_file_writes_the_key_there_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deploy.pem"
    outcome = ok(keypairs.CREATE_KEYPAIR, ["deploy", "-f", str(path)], CREATE)
    assert outcome.stdout == f"KEYPAIR\tdeploy\t{FINGERPRINT}\n"
    assert path.read_text() == PRIVATE_KEY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_create_never_overwrites_a_file_and_then_makes_no_key_pair(tmp_path: Path) -> None:
    path = tmp_path / "deploy.pem"
    path.write_text("an older key\n")
    outcome = run_tool(keypairs.CREATE_KEYPAIR, ["deploy", "-f", str(path)])
    assert outcome.code == 1 and outcome.service.sent == []
    assert outcome.stderr == (
        f"euca-create-keypair: -f/--filename: {path} exists; not overwriting it with a new"
        " private key\n"
    )
    assert path.read_text() == "an older key\n"


def test_create_in_a_directory_that_does_not_exist_names_the_flag_and_sends_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "nowhere" / "deploy.pem"
    outcome = run_tool(keypairs.CREATE_KEYPAIR, ["deploy", "-f", str(path)])
    assert outcome.code == 1 and outcome.service.sent == []
    assert outcome.stderr.startswith("euca-create-keypair: -f/--filename: cannot create")


def test_a_refused_create_leaves_no_file_behind(tmp_path: Path) -> None:
    path = tmp_path / "deploy.pem"
    outcome = run_tool(
        keypairs.CREATE_KEYPAIR,
        ["deploy", "-f", str(path)],
        ec2_error("InvalidKeyPair.Duplicate", "The keypair 'deploy' already exists."),
    )
    assert outcome.code == 1
    assert outcome.stderr == (
        "euca-create-keypair: InvalidKeyPair.Duplicate: The keypair 'deploy' already exists.\n"
    )
    assert not path.exists()


def test_create_refuses_an_unknown_key_type_naming_the_flag() -> None:
    outcome = run_tool(keypairs.CREATE_KEYPAIR, ["deploy", "-t", "dsa"])
    assert outcome.code == 2 and outcome.service.sent == []
    assert "argument -t/--type: invalid choice: 'dsa'" in outcome.stderr


def test_debug_never_shows_the_private_key() -> None:
    outcome = run_tool(keypairs.CREATE_KEYPAIR, ["deploy", "--debug"], CREATE)
    assert outcome.code == 0
    assert "<keyMaterial>****</keyMaterial>" in outcome.stderr
    assert PRIVATE_KEY.splitlines()[1] not in outcome.stderr
    assert PRIVATE_KEY.splitlines()[1] in outcome.stdout  # the one place it is meant to go


# euca-import-keypair


def test_import_prints_the_keypair_line(public_key_file: Path) -> None:
    outcome = ok(
        keypairs.IMPORT_KEYPAIR, ["laptop", "--public-key-file", str(public_key_file)], IMPORT
    )
    assert outcome.stdout == "KEYPAIR\tlaptop\tz/5m5sHpHwn7ojr1TAd6Uu0Ev/gLiIZbRjz8i5vNSQU=\n"


def test_import_needs_the_public_key_file_flag() -> None:
    outcome = run_tool(keypairs.IMPORT_KEYPAIR, ["laptop"])
    assert outcome.code == 2
    assert "the following arguments are required: -f/--public-key-file" in outcome.stderr


def test_import_of_a_file_that_cannot_be_read_names_the_flag(tmp_path: Path) -> None:
    outcome = run_tool(keypairs.IMPORT_KEYPAIR, ["laptop", "-f", str(tmp_path / "none.pub")])
    assert outcome.code == 1 and outcome.service.sent == []
    assert outcome.stderr.startswith(
        f"euca-import-keypair: -f/--public-key-file: cannot read {tmp_path / 'none.pub'}:"
    )


def test_import_refuses_to_send_a_private_key(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    path.write_text(PRIVATE_KEY)
    outcome = run_tool(keypairs.IMPORT_KEYPAIR, ["laptop", "-f", str(path)])
    assert outcome.code == 1 and outcome.service.sent == []
    assert "is a private key; give its .pub file" in outcome.stderr


def test_import_reports_a_bad_key_as_ec2_says(public_key_file: Path) -> None:
    message = "Key is not in valid OpenSSH public key format: the material is empty."
    outcome = run_tool(
        keypairs.IMPORT_KEYPAIR,
        ["laptop", "-f", str(public_key_file)],
        ec2_error("InvalidKeyPair.Format", message),
    )
    assert outcome.stderr == f"euca-import-keypair: InvalidKeyPair.Format: {message}\n"


# euca-describe-keypairs and euca-delete-keypair


def test_describe_prints_a_keypair_line_for_each() -> None:
    outcome = ok(keypairs.DESCRIBE_KEYPAIRS, [], DESCRIBE)
    assert outcome.stdout == (
        f"KEYPAIR\tdeploy\t{FINGERPRINT}\n"
        "KEYPAIR\tlaptop\tz/5m5sHpHwn7ojr1TAd6Uu0Ev/gLiIZbRjz8i5vNSQU=\n"
    )


def test_describe_with_none_prints_nothing() -> None:
    assert ok(keypairs.DESCRIBE_KEYPAIRS, [], DESCRIBE_EMPTY).stdout == ""


def test_describe_of_an_unknown_name_is_one_line_with_ec2s_code() -> None:
    outcome = run_tool(
        keypairs.DESCRIBE_KEYPAIRS,
        ["nosuch"],
        ec2_error("InvalidKeyPair.NotFound", "The key pair 'nosuch' does not exist"),
    )
    assert outcome.stderr == (
        "euca-describe-keypairs: InvalidKeyPair.NotFound: The key pair 'nosuch' does not exist\n"
    )


def test_delete_prints_the_keypair_line_as_euca2ools_does() -> None:
    assert ok(keypairs.DELETE_KEYPAIR, ["deploy"], DELETE).stdout == "KEYPAIR\tdeploy\n"


def test_delete_needs_a_name() -> None:
    outcome = run_tool(keypairs.DELETE_KEYPAIR, [])
    assert outcome.code == 2 and outcome.service.sent == []


# Installed


def test_every_console_script_in_setup_cfg_names_a_function_that_exists() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = config["options.entry_points"]["console_scripts"].strip().splitlines()
    targets = dict(line.replace(" ", "").split("=") for line in declared)
    for name in ("euca-create-keypair", "euca-import-keypair", "euca-describe-keypairs",
                 "euca-delete-keypair"):  # fmt: skip
        assert name in targets, f"setup.cfg installs no {name}"
    for name, target in targets.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_the_key_pair_tools_answer_help_without_credentials(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for tool in keypairs.TOOLS:
        outcome = run_tool(tool, ["--help"], env={})
        assert outcome.code == 0 and outcome.service.sent == []
        assert f"usage: {tool.name} " in capsys.readouterr().out
