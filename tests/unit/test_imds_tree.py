"""The metadata tree of one instance: listings, the IAM items byte for byte, instance items.

Conformance with spec/imds.md lines 15-24 and its "Exact bytes" section. The sample assignment
and credentials here are shared with test_imds_rules.py and test_imds_botocore.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from agent.imds.credentials import CredentialSet
from agent.imds.tree import (
    CREDENTIALS_EXPIRED,
    CREDENTIALS_EXPIRING,
    NO_CREDENTIALS,
    NOT_FOUND,
    VERSIONS,
    CredentialsState,
    CredentialsUnavailable,
    Directory,
    Found,
    ImdsTree,
)
from common.identitydoc import aws_json
from common.nodemessages import (
    InstanceMetadata,
    InstanceProfile,
    MessageError,
    parse_instance,
)
from common.timestamps import format_timestamp, parse_timestamp

# -- shared sample data ------------------------------------------------------------------------

INSTANCE_ID = "i-0123456789abcdef0"
ACCOUNT_ID = "123456789012"
ROLE = "web-role"
PROFILE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/web"
PROFILE_ID = "AIPAEXAMPLEPROFILE123"
LAST_UPDATED = datetime(2026, 11, 27, 13, 17, 17, tzinfo=UTC)
EXPIRATION = datetime(2026, 11, 27, 19, 17, 17, tzinfo=UTC)
NOW_DATETIME = LAST_UPDATED + timedelta(minutes=1)
NOW = NOW_DATETIME.timestamp()
ACCESS_KEY_ID = "ASIAEXAMPLEACCESSKEY"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "RC1.ZXhhbXBsZS1zZXNzaW9uLXRva2Vu"

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def assignment(**changes: Any) -> dict[str, Any]:
    """One instance object of the node API's assignments, as the controller sends it."""
    body: dict[str, Any] = {
        "instance_id": INSTANCE_ID,
        "account_id": ACCOUNT_ID,
        "netns": f"rc-{INSTANCE_ID}",
        "instance_profile": {"arn": PROFILE_ARN, "id": PROFILE_ID, "role_name": ROLE},
        "metadata_options": {
            "http_tokens": "optional",
            "http_put_response_hop_limit": 1,
            "http_endpoint": "enabled",
        },
        "metadata": {
            "instance-id": INSTANCE_ID,
            "ami-id": "ami-0abcdef1234567890",
            "ami-launch-index": "0",
            "instance-type": "m5.large",
            "reservation-id": "r-0123456789abcdef0",
            "placement/availability-zone": "rc-east-1a",
            "placement/region": "rc-east-1",
            "local-ipv4": "10.1.2.3",
            "local-hostname": "ip-10-1-2-3.rc-east-1.compute.internal",
            "hostname": "ip-10-1-2-3.rc-east-1.compute.internal",
            "launch-time": "2026-11-27T12:00:00Z",
            "account-id": ACCOUNT_ID,
        },
    }
    body.update(changes)
    return body


def controller_credentials(**changes: str) -> dict[str, str]:
    """The node API's credentials answer for the sample instance."""
    body = {
        "AccessKeyId": ACCESS_KEY_ID,
        "SecretAccessKey": SECRET,
        "Token": SESSION_TOKEN,
        "Expiration": format_timestamp(EXPIRATION),
        "RoleArn": f"arn:aws:iam::{ACCOUNT_ID}:role/{ROLE}",
        "InstanceProfileArn": PROFILE_ARN,
        "InstanceProfileId": PROFILE_ID,
        "AccountId": ACCOUNT_ID,
    }
    body.update(changes)
    return body


def credential_set(**changes: str) -> CredentialSet:
    return CredentialSet.from_node_api(controller_credentials(**changes), LAST_UPDATED)


def make_tree(credentials: CredentialsState | str = "default", **changes: Any) -> ImdsTree:
    served = credential_set() if credentials == "default" else credentials
    assert not isinstance(served, str)
    return ImdsTree.for_instance(parse_instance(assignment(**changes)), served)


def body_of(tree: ImdsTree, path: str) -> bytes:
    answer = tree.lookup(path)
    assert isinstance(answer, Found | Directory), f"{path} is {answer}"
    return answer.body


# -- exact bytes -------------------------------------------------------------------------------

EXPECTED_CREDENTIALS = (
    b"{\n"
    b'  "Code" : "Success",\n'
    b'  "LastUpdated" : "2026-11-27T13:17:17Z",\n'
    b'  "Type" : "AWS-HMAC",\n'
    b'  "AccessKeyId" : "ASIAEXAMPLEACCESSKEY",\n'
    b'  "SecretAccessKey" : "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",\n'
    b'  "Token" : "RC1.ZXhhbXBsZS1zZXNzaW9uLXRva2Vu",\n'
    b'  "Expiration" : "2026-11-27T19:17:17Z"\n'
    b"}"
)

EXPECTED_INFO = (
    b"{\n"
    b'  "Code" : "Success",\n'
    b'  "LastUpdated" : "2026-11-27T13:17:17Z",\n'
    b'  "InstanceProfileArn" : "arn:aws:iam::123456789012:instance-profile/web",\n'
    b'  "InstanceProfileId" : "AIPAEXAMPLEPROFILE123"\n'
    b"}"
)


def test_line_20_security_credentials_role_is_byte_for_byte_the_aws_layout() -> None:
    answer = make_tree().lookup(f"/latest/meta-data/iam/security-credentials/{ROLE}")
    assert answer == Found(EXPECTED_CREDENTIALS, "text/plain")


def test_line_18_iam_info_is_byte_for_byte_the_aws_layout() -> None:
    assert make_tree().lookup("/latest/meta-data/iam/info") == Found(EXPECTED_INFO, "text/plain")


@pytest.mark.parametrize(
    "path", ["/latest/meta-data/iam/info", f"/latest/meta-data/iam/security-credentials/{ROLE}"]
)
def test_iam_json_has_no_trailing_newline_and_all_string_values(path: str) -> None:
    body = body_of(make_tree(), path)
    assert not body.endswith(b"\n")
    assert all(isinstance(value, str) for value in json.loads(body).values())


def test_line_20_credentials_keys_are_in_the_aws_order() -> None:
    body = json.loads(body_of(make_tree(), f"/latest/meta-data/iam/security-credentials/{ROLE}"))
    assert list(body) == [
        "Code",
        "LastUpdated",
        "Type",
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
    ]
    assert body["Code"] == "Success" and body["Type"] == "AWS-HMAC"


def test_line_18_instance_profile_id_starts_aipa() -> None:
    info = json.loads(body_of(make_tree(), "/latest/meta-data/iam/info"))
    assert info["InstanceProfileId"].startswith("AIPA")


def test_aws_json_escapes_quotes_backslashes_and_non_ascii() -> None:
    body = aws_json([("Token", 'a"b\\c/é')])
    assert body == b'{\n  "Token" : "a\\"b\\\\c/\\u00e9"\n}'
    assert json.loads(body) == {"Token": 'a"b\\c/é'}


# -- line 21: timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 27, 19, 17, 17, 999_999, tzinfo=UTC),
        datetime(2026, 11, 27, 21, 17, 17, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 11, 27, 19, 17, 17),
    ],
    ids=["fraction", "offset", "naive"],
)
def test_line_21_timestamps_are_utc_seconds_with_z(moment: datetime) -> None:
    assert format_timestamp(moment) == "2026-11-27T19:17:17Z"


def test_line_21_every_served_timestamp_has_the_exact_layout() -> None:
    expiration = datetime(2026, 11, 27, 19, 17, 17, 123_456, tzinfo=timezone(timedelta(hours=-5)))
    tree = make_tree(
        CredentialSet(
            ACCESS_KEY_ID,
            SECRET,
            SESSION_TOKEN,
            expiration=expiration,
            last_updated=LAST_UPDATED + timedelta(microseconds=5),
        )
    )
    for path in (
        "/latest/meta-data/iam/info",
        f"/latest/meta-data/iam/security-credentials/{ROLE}",
    ):
        body = json.loads(body_of(tree, path))
        stamps = [body[key] for key in ("LastUpdated", "Expiration") if key in body]
        assert stamps and all(TIMESTAMP.fullmatch(stamp) for stamp in stamps)
    document = json.loads(body_of(tree, "/latest/dynamic/instance-identity/document"))
    assert TIMESTAMP.fullmatch(document["pendingTime"])


def test_parse_timestamp_reads_the_wire_layout_and_iso_forms_as_utc() -> None:
    assert parse_timestamp("2026-11-27T19:17:17Z") == EXPIRATION
    assert parse_timestamp("2026-11-27T20:17:17+01:00") == EXPIRATION
    assert parse_timestamp("2026-11-27T19:17:17") == EXPIRATION
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


# -- lines 15-17, 19: listings -----------------------------------------------------------------


def test_line_15_root_lists_the_supported_versions() -> None:
    assert body_of(make_tree(), "/") == "\n".join(VERSIONS).encode()
    assert VERSIONS[-1] == "latest" and list(VERSIONS[:-1]) == sorted(VERSIONS[:-1])


@pytest.mark.parametrize("version", ["1.0", "2009-04-04", "2016-09-02", "2021-03-23"])
def test_every_dated_version_serves_the_tree_of_latest(version: str) -> None:
    tree = make_tree()
    for path in tree.paths():
        dated = path.replace("/latest/", f"/{version}/", 1)
        assert tree.lookup(dated) == tree.lookup(path)
    assert tree.lookup(f"/{version}/meta-data/") == tree.lookup("/latest/meta-data/")
    assert tree.lookup(f"/{version}/") == tree.lookup("/latest/")


@pytest.mark.parametrize(
    "path",
    [
        "//latest/meta-data/",
        "/latest//meta-data/",
        "/latest/meta-data//",
        "/latest///meta-data/",
        "/latest/meta-data//instance-id//",
    ],
)
def test_consecutive_slashes_count_as_one(path: str) -> None:
    tree = make_tree()
    wanted = "/latest/meta-data/instance-id" if "instance-id" in path else "/latest/meta-data/"
    assert tree.lookup(path) == tree.lookup(wanted) != NOT_FOUND


def test_latest_lists_dynamic_and_meta_data_without_user_data() -> None:
    assert body_of(make_tree(), "/latest/") == b"dynamic/\nmeta-data/"
    assert make_tree().lookup("/latest/user-data") is NOT_FOUND


def test_line_16_meta_data_lists_items_one_per_line_directories_with_a_slash() -> None:
    assert body_of(make_tree(), "/latest/meta-data/") == (
        b"ami-id\nami-launch-index\nblock-device-mapping/\nhostname\niam/\ninstance-id\n"
        b"instance-type\nlocal-hostname\nlocal-ipv4\nplacement/\nreservation-id\nservices/"
    )


@pytest.mark.parametrize(
    "profile",
    [None, {"arn": PROFILE_ARN, "id": PROFILE_ID, "role_name": None}],
    ids=["no-profile", "profile-without-role"],
)
def test_line_16_meta_data_lists_iam_only_with_a_role(profile: object) -> None:
    listing = body_of(make_tree(instance_profile=profile), "/latest/meta-data/").split(b"\n")
    assert b"iam/" not in listing and b"instance-id" in listing


def test_line_17_iam_lists_info_and_security_credentials() -> None:
    assert body_of(make_tree(), "/latest/meta-data/iam/") == b"info\nsecurity-credentials/"


def test_line_19_security_credentials_is_the_role_name_alone_without_newline() -> None:
    assert body_of(make_tree(), "/latest/meta-data/iam/security-credentials/") == ROLE.encode()


def test_listings_have_no_trailing_newline() -> None:
    tree = make_tree()
    for path in ("/", "/latest/", "/latest/meta-data/", "/latest/meta-data/placement/"):
        assert not body_of(tree, path).endswith(b"\n"), path


@pytest.mark.parametrize(
    "path",
    [
        "/latest",
        "/latest/meta-data",
        "/latest/meta-data/iam",
        "/latest/meta-data/iam/security-credentials",
        "/latest/meta-data/placement",
        "/latest/dynamic/instance-identity",
    ],
)
def test_line_11_a_directory_answers_the_same_without_its_trailing_slash(path: str) -> None:
    tree = make_tree()
    assert isinstance(tree.lookup(path), Directory)
    assert tree.lookup(path) == tree.lookup(path + "/")


def test_a_leaf_also_answers_with_one_trailing_slash() -> None:
    tree = make_tree()
    assert body_of(tree, "/latest/meta-data/placement/availability-zone/") == b"rc-east-1a"


@pytest.mark.parametrize(
    "path",
    [
        "",
        "latest/meta-data/",
        "/latest/./meta-data/",
        "/latest/meta-data/../meta-data/",
        "/latest/meta-data/instance-id/x",
        "/LATEST/meta-data/",
        "/2021-03-24/meta-data/",
        "/latest/meta-data/instance-id%2F",
    ],
)
def test_paths_that_name_nothing_are_not_found(path: str) -> None:
    assert make_tree().lookup(path) is NOT_FOUND


def test_path_segments_are_percent_decoded() -> None:
    assert body_of(make_tree(), "/latest/meta-data/instance%2Did") == INSTANCE_ID.encode()


# -- lines 22-23: extended credentials, no role, unknown role ----------------------------------


def test_line_22_extended_credentials_are_the_same_with_account_id_last() -> None:
    tree = make_tree()
    extended = body_of(tree, f"/latest/meta-data/iam/security-credentials-extended/{ROLE}")
    assert extended == EXPECTED_CREDENTIALS[:-2] + b',\n  "AccountId" : "123456789012"\n}'
    listing = body_of(tree, "/latest/meta-data/iam/security-credentials-extended/")
    assert listing == ROLE.encode()


def test_line_22_extended_credentials_are_404_when_the_account_is_unknown() -> None:
    metadata = dict(assignment()["metadata"])
    del metadata["account-id"]
    without_account = dataclasses.replace(credential_set(), account_id="")
    tree = make_tree(without_account, metadata=metadata, account_id=None)
    assert tree.lookup(f"/latest/meta-data/iam/security-credentials-extended/{ROLE}") is NOT_FOUND
    assert tree.lookup(f"/latest/meta-data/iam/security-credentials/{ROLE}") != NOT_FOUND


@pytest.mark.parametrize(
    "profile",
    [None, {"arn": PROFILE_ARN, "id": PROFILE_ID, "role_name": None}],
    ids=["no-profile", "profile-without-role"],
)
@pytest.mark.parametrize(
    "path",
    [
        "/latest/meta-data/iam",
        "/latest/meta-data/iam/",
        "/latest/meta-data/iam/info",
        "/latest/meta-data/iam/security-credentials/",
        f"/latest/meta-data/iam/security-credentials/{ROLE}",
        "/latest/meta-data/iam/security-credentials-extended/",
        f"/latest/meta-data/iam/security-credentials-extended/{ROLE}",
    ],
)
def test_line_23_without_a_role_every_iam_path_is_not_found(profile: object, path: str) -> None:
    assert make_tree(instance_profile=profile).lookup(path) is NOT_FOUND


@pytest.mark.parametrize("name", ["other-role", ROLE.upper(), ROLE + "x", "web"])
def test_line_23_an_unknown_role_name_is_not_found(name: str) -> None:
    tree = make_tree()
    assert tree.lookup(f"/latest/meta-data/iam/security-credentials/{name}") is NOT_FOUND
    assert tree.lookup(f"/latest/meta-data/iam/security-credentials-extended/{name}") is NOT_FOUND


# -- line 28 at this layer: unavailable credentials --------------------------------------------

CREDENTIAL_PATHS = [
    "/latest/meta-data/iam/security-credentials/",
    f"/latest/meta-data/iam/security-credentials/{ROLE}",
    "/latest/meta-data/iam/security-credentials-extended/",
    f"/latest/meta-data/iam/security-credentials-extended/{ROLE}",
]


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (None, NO_CREDENTIALS),
        (CredentialsUnavailable(), NO_CREDENTIALS),
        (
            CredentialsUnavailable(CREDENTIALS_EXPIRING, last_updated=LAST_UPDATED),
            CREDENTIALS_EXPIRING,
        ),
    ],
    ids=["never-fetched", "none-held", "expiring"],
)
def test_unavailable_credentials_are_not_found_and_iam_info_says_why(
    state: CredentialsState, code: str
) -> None:
    tree = make_tree(state)
    assert all(tree.lookup(path) is NOT_FOUND for path in CREDENTIAL_PATHS)
    info = json.loads(body_of(tree, "/latest/meta-data/iam/info"))
    assert info["Code"] == code and info["Message"]
    assert info["InstanceProfileArn"] == PROFILE_ARN and info["InstanceProfileId"] == PROFILE_ID
    assert body_of(tree, "/latest/meta-data/iam/") == b"info"


def test_unavailable_iam_info_keeps_the_aws_layout() -> None:
    tree = make_tree(CredentialsUnavailable(CREDENTIALS_EXPIRING, "Renewing.", LAST_UPDATED))
    assert body_of(tree, "/latest/meta-data/iam/info") == (
        b"{\n"
        b'  "Code" : "CredentialsExpiring",\n'
        b'  "Message" : "Renewing.",\n'
        b'  "LastUpdated" : "2026-11-27T13:17:17Z",\n'
        b'  "InstanceProfileArn" : "arn:aws:iam::123456789012:instance-profile/web",\n'
        b'  "InstanceProfileId" : "AIPAEXAMPLEPROFILE123"\n'
        b"}"
    )


def test_as_of_hides_credentials_once_expired_whatever_the_caller_decided() -> None:
    tree = make_tree()
    assert tree.as_of(EXPIRATION.timestamp() - 1) is tree
    expired = tree.as_of(EXPIRATION.timestamp())
    assert all(expired.lookup(path) is NOT_FOUND for path in CREDENTIAL_PATHS)
    info = json.loads(body_of(expired, "/latest/meta-data/iam/info"))
    assert info["Code"] == CREDENTIALS_EXPIRED
    assert info["LastUpdated"] == "2026-11-27T13:17:17Z"
    assert tree.as_of(EXPIRATION.timestamp() + 60) is expired


def test_as_of_without_credentials_is_the_same_tree() -> None:
    tree = make_tree(None)
    assert tree.as_of(NOW) is tree


# -- line 24: instance items -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "value"),
    [
        ("instance-id", INSTANCE_ID),
        ("ami-id", "ami-0abcdef1234567890"),
        ("ami-launch-index", "0"),
        ("instance-type", "m5.large"),
        ("reservation-id", "r-0123456789abcdef0"),
        ("local-hostname", "ip-10-1-2-3.rc-east-1.compute.internal"),
        ("local-ipv4", "10.1.2.3"),
        ("hostname", "ip-10-1-2-3.rc-east-1.compute.internal"),
        ("placement/availability-zone", "rc-east-1a"),
        ("placement/region", "rc-east-1"),
        ("services/domain", "amazonaws.com"),
        ("services/partition", "aws"),
    ],
)
def test_line_24_instance_items(item: str, value: str) -> None:
    assert make_tree().lookup(f"/latest/meta-data/{item}") == Found(value.encode(), "text/plain")


def test_line_24_the_identity_document() -> None:
    body = body_of(make_tree(), "/latest/dynamic/instance-identity/document")
    assert json.loads(body) == {
        "accountId": ACCOUNT_ID,
        "architecture": "x86_64",
        "availabilityZone": "rc-east-1a",
        "imageId": "ami-0abcdef1234567890",
        "instanceId": INSTANCE_ID,
        "instanceType": "m5.large",
        "pendingTime": "2026-11-27T12:00:00Z",
        "privateIp": "10.1.2.3",
        "region": "rc-east-1",
        "version": "2017-09-30",
    }
    assert body.startswith(b'{\n  "accountId" : "123456789012",\n') and body.endswith(b'"\n}')


def test_dynamic_lists_the_identity_document() -> None:
    tree = make_tree()
    assert body_of(tree, "/latest/dynamic/") == b"instance-identity/"
    assert body_of(tree, "/latest/dynamic/instance-identity/") == b"document"


def test_an_unknown_item_is_left_out_of_the_tree_and_the_document() -> None:
    metadata = {"instance-id": INSTANCE_ID}
    tree = make_tree(metadata=metadata, account_id=None)
    assert tree.lookup("/latest/meta-data/ami-id") is NOT_FOUND
    assert b"ami-id" not in body_of(tree, "/latest/meta-data/")
    document = json.loads(body_of(tree, "/latest/dynamic/instance-identity/document"))
    assert document == {
        "architecture": "x86_64",
        "instanceId": INSTANCE_ID,
        "version": "2017-09-30",
    }


def test_an_integer_launch_index_is_served_as_text() -> None:
    metadata = {**assignment()["metadata"], "ami-launch-index": 3}
    assert body_of(make_tree(metadata=metadata), "/latest/meta-data/ami-launch-index") == b"3"


def test_the_account_falls_back_to_the_assignments_account_id() -> None:
    metadata = {k: v for k, v in assignment()["metadata"].items() if k != "account-id"}
    tree = make_tree(metadata=metadata)
    document = json.loads(body_of(tree, "/latest/dynamic/instance-identity/document"))
    assert document["accountId"] == ACCOUNT_ID


# -- building from the contracts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metadata": {}}, "instance-id"),
        ({"metadata": None}, "metadata"),
        ({"metadata": {"instance-id": INSTANCE_ID, "launch-time": "soon"}}, "launch-time"),
        ({"metadata": {"instance-id": INSTANCE_ID, "ami-id": ["x"]}}, "ami-id"),
        ({"metadata": {"instance-id": INSTANCE_ID, "ami-launch-index": True}}, "ami-launch-index"),
        ({"instance_profile": "web"}, "instance_profile"),
        ({"instance_profile": {"arn": PROFILE_ARN}}, "instance_profile"),
        ({"instance_profile": {"arn": PROFILE_ARN, "id": PROFILE_ID, "role_name": 7}}, "role_name"),
    ],
)
def test_a_malformed_assignment_is_refused_naming_the_key(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(MessageError, match=message):
        parse_instance(assignment(**changes))


def test_the_tree_reads_every_contract_field() -> None:
    tree = make_tree()
    assert tree.profile == InstanceProfile(PROFILE_ARN, PROFILE_ID, ROLE)
    assert tree.metadata == InstanceMetadata(
        instance_id=INSTANCE_ID,
        account_id=ACCOUNT_ID,
        ami_id="ami-0abcdef1234567890",
        ami_launch_index="0",
        instance_type="m5.large",
        reservation_id="r-0123456789abcdef0",
        availability_zone="rc-east-1a",
        region="rc-east-1",
        local_ipv4="10.1.2.3",
        local_hostname="ip-10-1-2-3.rc-east-1.compute.internal",
        hostname="ip-10-1-2-3.rc-east-1.compute.internal",
        launch_time=datetime(2026, 11, 27, 12, tzinfo=UTC),
    )


def test_credentials_from_the_controller_keep_every_field() -> None:
    served = credential_set()
    assert (served.access_key_id, served.secret_access_key, served.token) == (
        ACCESS_KEY_ID,
        SECRET,
        SESSION_TOKEN,
    )
    assert (served.expiration, served.last_updated) == (EXPIRATION, LAST_UPDATED)
    assert served.role_arn.endswith(f":role/{ROLE}") and served.account_id == ACCOUNT_ID
    assert (served.instance_profile_arn, served.instance_profile_id) == (PROFILE_ARN, PROFILE_ID)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AccessKeyId", None),
        ("SecretAccessKey", ""),
        ("Token", 5),
        ("Expiration", "in six hours"),
        ("AccountId", 123456789012),
    ],
)
def test_malformed_controller_credentials_are_refused_naming_the_key(
    key: str, value: object
) -> None:
    body: dict[str, object] = {**controller_credentials(), key: value}
    if value is None:
        del body[key]
    with pytest.raises(ValueError, match=key):
        CredentialSet.from_node_api(body, LAST_UPDATED)


def test_a_credential_sets_repr_never_shows_the_secret_or_token() -> None:
    text = repr(credential_set())
    assert ACCESS_KEY_ID in text and SECRET not in text and SESSION_TOKEN not in text


def test_naive_credential_times_are_taken_as_utc() -> None:
    naive = CredentialSet(
        "A", "S", "T", EXPIRATION.replace(tzinfo=None), LAST_UPDATED.replace(tzinfo=None)
    )
    assert naive.expiration == EXPIRATION and naive.last_updated == LAST_UPDATED
    assert not naive.expired_at(EXPIRATION.timestamp() - 1) and naive.expired_at(
        EXPIRATION.timestamp()
    )


def test_paths_lists_every_leaf() -> None:
    paths = make_tree().paths()
    assert f"/latest/meta-data/iam/security-credentials/{ROLE}" in paths
    assert "/latest/dynamic/instance-identity/document" in paths
    assert all(isinstance(make_tree().lookup(path), Found) for path in paths)


# -- issue 12: what a guest boots from ---------------------------------------------------------

MAC = "0e:49:61:0f:c3:11"
OPENSSH = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3Qta2V5LW1hdGVyaWFsLTAxMjM0NTY3 me@laptop"
GUEST = {
    "user_data": base64.b64encode(b"#cloud-config\nhostname: web-1\n\x00\xff").decode(),
    "public_keys": [{"name": "ops", "openssh_key": OPENSSH}],
    "network": {
        "mac": MAC,
        "interface_id": "eni-0f1e2d3c4b5a69788",
        "subnet_cidr": "10.1.0.0/16",
        "security_groups": ["default", "web"],
    },
    "tags": [{"key": "Name", "value": "web-1"}, {"key": "team/owner", "value": "x"}],
    "identity": {
        "document": '{\n  "instanceId" : "i-0123456789abcdef0"\n}',
        "signature": "c2lnbmF0dXJl",
        "pkcs7": "cGtjczc=",
        "rsa2048": "cnNhMjA0OA==",
    },
}


def guest_tree(**changes: Any) -> ImdsTree:
    return make_tree(**{**GUEST, **changes})


def test_user_data_is_served_as_given_as_octets() -> None:
    found = guest_tree().lookup("/latest/user-data")
    assert found == Found(b"#cloud-config\nhostname: web-1\n\x00\xff", "application/octet-stream")
    assert body_of(guest_tree(), "/latest/") == b"dynamic/\nmeta-data/\nuser-data"
    assert guest_tree().lookup("/2009-04-04/user-data") == found


def test_no_user_data_is_a_404_and_empty_user_data_is_served_empty() -> None:
    assert guest_tree(user_data=None).lookup("/latest/user-data") is NOT_FOUND
    assert guest_tree(user_data="").lookup("/latest/user-data") == Found(
        b"", "application/octet-stream"
    )


def test_public_keys_are_listed_as_aws_lists_them() -> None:
    tree = guest_tree()
    assert body_of(tree, "/latest/meta-data/public-keys/") == b"0=ops"
    assert body_of(tree, "/latest/meta-data/public-keys") == b"0=ops"
    assert body_of(tree, "/latest/meta-data/public-keys/0/") == b"openssh-key"
    key, material, _comment = OPENSSH.split()
    assert body_of(tree, "/latest/meta-data/public-keys/0/openssh-key") == (
        f"{key} {material} ops\n".encode()
    )
    assert b"public-keys/" in body_of(tree, "/latest/meta-data/").split(b"\n")


def test_without_a_key_there_is_no_public_keys() -> None:
    tree = guest_tree(public_keys=[])
    assert tree.lookup("/latest/meta-data/public-keys/") is NOT_FOUND
    assert b"public-keys/" not in body_of(tree, "/latest/meta-data/").split(b"\n")


def test_the_interface_is_served_under_its_mac() -> None:
    tree = guest_tree()
    base = f"/latest/meta-data/network/interfaces/macs/{MAC}/"
    assert body_of(tree, "/latest/meta-data/mac") == MAC.encode()
    assert body_of(tree, "/latest/meta-data/network/interfaces/macs/") == f"{MAC}/".encode()
    assert body_of(tree, base) == (
        b"device-number\ninterface-id\nlocal-hostname\nlocal-ipv4s\nmac\nowner-id\n"
        b"security-groups\nsubnet-ipv4-cidr-block"
    )
    assert body_of(tree, base + "device-number") == b"0"
    assert body_of(tree, base + "interface-id") == b"eni-0f1e2d3c4b5a69788"
    assert body_of(tree, base + "local-ipv4s") == b"10.1.2.3"
    assert body_of(tree, base + "owner-id") == ACCOUNT_ID.encode()
    assert body_of(tree, base + "subnet-ipv4-cidr-block") == b"10.1.0.0/16"
    assert body_of(tree, base + "security-groups") == b"default\nweb"
    assert body_of(tree, "/latest/meta-data/security-groups") == b"default\nweb"
    # No VPC objects, no public addresses: not served rather than made up.
    for absent in ("vpc-id", "subnet-id", "security-group-ids"):
        assert tree.lookup(base + absent) is NOT_FOUND
    for absent in ("public-ipv4", "public-hostname"):
        assert tree.lookup("/latest/meta-data/" + absent) is NOT_FOUND


def test_an_instance_from_before_macs_has_no_network_items() -> None:
    tree = guest_tree(network=None)
    assert tree.lookup("/latest/meta-data/mac") is NOT_FOUND
    assert tree.lookup("/latest/meta-data/network/") is NOT_FOUND


def test_block_device_mapping_and_the_zone_id() -> None:
    metadata = {**assignment()["metadata"], "placement/availability-zone-id": "use1-az1"}
    tree = guest_tree(metadata=metadata)
    assert body_of(tree, "/latest/meta-data/block-device-mapping/") == b"ami\nroot"
    assert body_of(tree, "/latest/meta-data/block-device-mapping/root") == b"/dev/vda"
    assert body_of(tree, "/latest/meta-data/placement/availability-zone-id") == b"use1-az1"


def test_tags_in_metadata_list_the_keys_aws_allows_there() -> None:
    tree = guest_tree()
    assert body_of(tree, "/latest/meta-data/tags/instance/") == b"Name"
    assert body_of(tree, "/latest/meta-data/tags/instance/Name") == b"web-1"
    assert tree.lookup("/latest/meta-data/tags/instance/team/owner") is NOT_FOUND
    assert tree.lookup("/latest/meta-data/tags/instance/team%2Fowner") is NOT_FOUND


def test_tags_enabled_without_tags_is_an_empty_listing_and_disabled_is_none() -> None:
    empty = guest_tree(tags=[])
    assert empty.lookup("/latest/meta-data/tags/instance/") == Directory(())
    assert body_of(empty, "/latest/meta-data/tags/") == b"instance/"
    assert b"tags/" in body_of(empty, "/latest/meta-data/").split(b"\n")
    disabled = guest_tree(tags=None)
    assert disabled.lookup("/latest/meta-data/tags/") is NOT_FOUND
    assert b"tags/" not in body_of(disabled, "/latest/meta-data/").split(b"\n")


def test_the_signed_document_is_served_as_the_controller_made_it() -> None:
    tree = guest_tree()
    identity = "/latest/dynamic/instance-identity/"
    assert body_of(tree, identity + "document") == GUEST["identity"]["document"].encode()
    assert body_of(tree, identity + "signature") == b"c2lnbmF0dXJl"
    assert body_of(tree, identity + "pkcs7") == b"cGtjczc="
    assert body_of(tree, identity + "rsa2048") == b"cnNhMjA0OA=="
    assert body_of(tree, identity) == b"document\npkcs7\nrsa2048\nsignature"


def test_an_unsigned_instance_has_the_agents_document_and_no_signatures() -> None:
    tree = guest_tree(identity=None)
    identity = "/latest/dynamic/instance-identity/"
    assert json.loads(body_of(tree, identity + "document"))["instanceId"] == INSTANCE_ID
    assert body_of(tree, identity) == b"document"
    unsigned = guest_tree(identity={"document": "{}"})
    assert body_of(unsigned, identity) == b"document"
    assert body_of(unsigned, identity + "document") == b"{}"


def test_guest_data_survives_expired_credentials() -> None:
    tree = guest_tree().as_of(EXPIRATION.timestamp() + 1)
    assert body_of(tree, "/latest/meta-data/mac") == MAC.encode()
    assert tree.lookup("/latest/user-data") != NOT_FOUND
