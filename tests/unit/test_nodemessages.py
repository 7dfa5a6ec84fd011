"""The node API's messages (common/nodemessages.py): serialize then parse is the identity for
every message; the controller's JSON is read and written back byte for byte; unknown fields are
ignored, missing optional ones take their defaults, and a missing required field or a wrong
type is refused with an error that names the field."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.nodemessages import (
    DEFAULT_METADATA_OPTIONS,
    MAX_HOP_LIMIT,
    MAX_REVISION,
    MIN_HOP_LIMIT,
    ROLE_ARN,
    AssignmentsAnswer,
    CredentialsAnswer,
    ErrorAnswer,
    HttpEndpoint,
    HttpTokens,
    InstanceAssignment,
    InstanceIdentity,
    InstanceMetadata,
    InstanceProfile,
    MessageError,
    MetadataOptions,
    NetworkInterface,
    PublicKey,
    RefusedInstance,
    parse_assignments,
    parse_credentials,
    parse_error,
    parse_instance,
)

INSTANCE_ID = "i-0123456789abcdef0"
ACCOUNT_ID = "123456789012"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "RC1.ZXhhbXBsZS1zZXNzaW9uLXRva2Vu"


def controller_instance(instance_id: str = INSTANCE_ID) -> dict[str, Any]:
    """One instance exactly as controller/nodeapi.py writes it (every field, in its order)."""
    return {
        "instance_id": instance_id,
        "account_id": ACCOUNT_ID,
        "netns": f"rc-{instance_id}",
        "instance_profile": {
            "arn": f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/web",
            "id": "AIPAEXAMPLEPROFILE01",
            "role_name": "web",
        },
        "metadata_options": {
            "http_tokens": "required",
            "http_put_response_hop_limit": 1,
            "http_endpoint": "enabled",
        },
        "metadata": {
            "instance-id": instance_id,
            "ami-id": "emi-12345678",
            "ami-launch-index": "0",
            "instance-type": "m1.small",
            "reservation-id": "r-6f9de2d91c7e02b40",
            "placement/availability-zone": "us-east-1a",
            "placement/region": "us-east-1",
            "local-ipv4": "169.254.165.98",
            "local-hostname": "ip-169-254-165-98.ec2.internal",
            "hostname": "ip-169-254-165-98.ec2.internal",
            "launch-time": "2026-11-27T22:18:19Z",
            "account-id": ACCOUNT_ID,
        },
        "user_data": "I2Nsb3VkLWNvbmZpZwo=",
        "public_keys": [{"name": "ops", "openssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ops"}],
        "network": {
            "mac": "0e:49:61:0f:c3:11",
            "interface_id": "eni-0f1e2d3c4b5a69788",
            "subnet_cidr": "169.254.0.0/16",
            "security_groups": ["default", "web"],
        },
        "tags": [{"key": "Name", "value": "web-1"}],
        "identity": {"document": "{}", "signature": "c2ln", "pkcs7": "cGtjczc=", "rsa2048": None},
    }


def controller_credentials() -> dict[str, Any]:
    """A credentials answer exactly as controller/nodeapi.py writes it."""
    return {
        "AccessKeyId": "ASIAHSSWQI6EANUNFWSX",
        "SecretAccessKey": SECRET,
        "Token": TOKEN,
        "Expiration": "2026-11-28T04:18:19Z",
        "RoleArn": f"arn:aws:iam::{ACCOUNT_ID}:role/web",
        "InstanceProfileArn": f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/web",
        "InstanceProfileId": "AIPAEXAMPLEPROFILE01",
        "AccountId": ACCOUNT_ID,
    }


def answer(*instances: dict[str, Any], revision: int = 7) -> dict[str, Any]:
    return {"revision": revision, "instances": list(instances)}


def parse_one(instance: dict[str, Any]) -> InstanceAssignment:
    """`instance` alone in an answer, parsed; MessageError (as refused) if it is refused."""
    parsed, refused = parse_assignments(answer(instance))
    if refused:
        raise MessageError("", refused[0].reason)
    return parsed.instances[0]


# -- the controller's JSON, as it is ---------------------------------------------------------


def test_the_controllers_assignments_are_read_into_every_field() -> None:
    parsed, refused = parse_assignments(answer(controller_instance()))
    assert refused == ()
    assert parsed == AssignmentsAnswer(
        revision=7,
        instances=(
            InstanceAssignment(
                instance_id=INSTANCE_ID,
                account_id=ACCOUNT_ID,
                netns=f"rc-{INSTANCE_ID}",
                instance_profile=InstanceProfile(
                    f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/web", "AIPAEXAMPLEPROFILE01", "web"
                ),
                metadata_options=MetadataOptions(HttpTokens.REQUIRED, 1, HttpEndpoint.ENABLED),
                metadata=InstanceMetadata(
                    instance_id=INSTANCE_ID,
                    account_id=ACCOUNT_ID,
                    ami_id="emi-12345678",
                    ami_launch_index="0",
                    instance_type="m1.small",
                    reservation_id="r-6f9de2d91c7e02b40",
                    availability_zone="us-east-1a",
                    region="us-east-1",
                    local_ipv4="169.254.165.98",
                    local_hostname="ip-169-254-165-98.ec2.internal",
                    hostname="ip-169-254-165-98.ec2.internal",
                    launch_time=datetime(2026, 11, 27, 22, 18, 19, tzinfo=UTC),
                ),
                user_data=b"#cloud-config\n",
                public_keys=(PublicKey("ops", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ops"),),
                network=NetworkInterface(
                    "0e:49:61:0f:c3:11",
                    "eni-0f1e2d3c4b5a69788",
                    "169.254.0.0/16",
                    ("default", "web"),
                ),
                tags=(("Name", "web-1"),),
                identity=InstanceIdentity("{}", "c2ln", "cGtjczc=", None),
            ),
        ),
    )


def test_the_controllers_json_is_written_back_byte_for_byte() -> None:
    wire = answer(controller_instance(), {**controller_instance("i-00000001"), "netns": None})
    wire["instances"][1]["instance_profile"] = None
    parsed, _ = parse_assignments(wire)
    assert json.dumps(parsed.to_wire()) == json.dumps(wire)  # same keys, same order
    credentials = controller_credentials()
    assert json.dumps(parse_credentials(credentials).to_wire()) == json.dumps(credentials)
    error = {"error": "NotYourInstance", "message": "i-00000001 is not placed on this node"}
    assert json.dumps(parse_error(error).to_wire()) == json.dumps(error)


def test_a_profile_without_a_role_is_written_with_a_null_role_name() -> None:
    wire = controller_instance()
    wire["instance_profile"]["role_name"] = None
    assert parse_one(wire).to_wire() == wire


# -- serialize, then parse: the identity ------------------------------------------------------

TEXT = st.text(max_size=12)
WHOLE_SECONDS_UTC = st.datetimes(
    min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(lambda moment: moment.replace(microsecond=0))

PROFILES = st.builds(InstanceProfile, arn=TEXT, id=TEXT, role_name=st.none() | TEXT)
OPTIONS = st.builds(
    MetadataOptions,
    http_tokens=st.sampled_from(HttpTokens),
    http_put_response_hop_limit=st.integers(MIN_HOP_LIMIT, MAX_HOP_LIMIT),
    http_endpoint=st.sampled_from(HttpEndpoint),
)
OPTIONAL_TEXT = st.none() | TEXT
METADATA = st.builds(
    InstanceMetadata,
    instance_id=st.text(min_size=1, max_size=20),
    account_id=OPTIONAL_TEXT,
    ami_id=OPTIONAL_TEXT,
    ami_launch_index=OPTIONAL_TEXT,
    instance_type=OPTIONAL_TEXT,
    reservation_id=OPTIONAL_TEXT,
    availability_zone=OPTIONAL_TEXT,
    availability_zone_id=OPTIONAL_TEXT,
    region=OPTIONAL_TEXT,
    local_ipv4=OPTIONAL_TEXT,
    local_hostname=OPTIONAL_TEXT,
    hostname=OPTIONAL_TEXT,
    launch_time=st.none() | WHOLE_SECONDS_UTC,
)
INSTANCES = st.builds(
    InstanceAssignment,
    instance_id=TEXT,
    account_id=OPTIONAL_TEXT,
    netns=OPTIONAL_TEXT,
    instance_profile=st.none() | PROFILES,
    metadata_options=OPTIONS,
    metadata=METADATA,
    user_data=st.none() | st.binary(max_size=64),
    public_keys=st.lists(st.builds(PublicKey, name=TEXT, openssh_key=TEXT), max_size=2).map(tuple),
    network=st.none()
    | st.builds(
        NetworkInterface,
        mac=st.from_regex(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", fullmatch=True),
        interface_id=OPTIONAL_TEXT,
        subnet_cidr=OPTIONAL_TEXT,
        security_groups=st.lists(TEXT, max_size=3).map(tuple),
    ),
    tags=st.none()
    | st.lists(st.tuples(st.text(min_size=1, max_size=12), TEXT), max_size=3).map(tuple),
    identity=st.none()
    | st.builds(
        InstanceIdentity,
        document=TEXT,
        signature=OPTIONAL_TEXT,
        pkcs7=OPTIONAL_TEXT,
        rsa2048=OPTIONAL_TEXT,
    ),
)
ANSWERS = st.builds(
    AssignmentsAnswer,
    revision=st.integers(0, MAX_REVISION),
    instances=st.lists(INSTANCES, max_size=4).map(tuple),
)
NON_EMPTY = st.text(min_size=1, max_size=40)
CREDENTIALS = st.builds(
    CredentialsAnswer,
    access_key_id=NON_EMPTY,
    secret_access_key=NON_EMPTY,
    token=NON_EMPTY,
    expiration=WHOLE_SECONDS_UTC,
    role_arn=st.from_regex(ROLE_ARN, fullmatch=True),
    instance_profile_arn=NON_EMPTY,
    instance_profile_id=NON_EMPTY,
    account_id=NON_EMPTY,
)
ERRORS = st.builds(ErrorAnswer, error=TEXT, message=TEXT)


def through_json(message: Any) -> Any:
    """What the other side's ``json.loads`` gets from ``json.dumps(message.to_wire())``."""
    return json.loads(json.dumps(message.to_wire()))


@settings(max_examples=200, deadline=None)
@given(ANSWERS)
def test_an_assignments_answer_comes_back_as_it_was_sent(sent: AssignmentsAnswer) -> None:
    assert parse_assignments(through_json(sent)) == (sent, ())


@settings(max_examples=200, deadline=None)
@given(INSTANCES)
def test_an_instance_assignment_comes_back_as_it_was_sent(sent: InstanceAssignment) -> None:
    assert parse_instance(through_json(sent)) == sent


@settings(max_examples=200, deadline=None)
@given(CREDENTIALS)
def test_a_credentials_answer_comes_back_as_it_was_sent(sent: CredentialsAnswer) -> None:
    assert parse_credentials(through_json(sent)) == sent


@given(ERRORS)
def test_an_error_answer_comes_back_as_it_was_sent(sent: ErrorAnswer) -> None:
    assert parse_error(through_json(sent)) == sent


# -- evolution: unknown fields are ignored --------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        (),
        ("instances", 0),
        ("instances", 0, "instance_profile"),
        ("instances", 0, "metadata_options"),
        ("instances", 0, "metadata"),
    ],
)
def test_an_unknown_field_in_an_assignments_answer_is_ignored(where: tuple[Any, ...]) -> None:
    wire = answer(controller_instance())
    expected = parse_assignments(wire)
    newer = copy.deepcopy(wire)
    target: Any = newer
    for step in where:
        target = target[step]
    target["added_by_a_newer_controller"] = {"any": ["value", 1, None]}
    assert parse_assignments(newer) == expected


def test_an_unknown_field_in_a_credentials_or_error_answer_is_ignored() -> None:
    credentials = controller_credentials()
    expected = parse_credentials(credentials)
    assert parse_credentials({**credentials, "LastUpdated": "2026-11-27T22:18:19Z"}) == expected
    assert parse_error({"error": "NoRole", "message": "m", "retry": True}) == ErrorAnswer(
        "NoRole", "m"
    )


# -- evolution: missing optional fields take their defaults ----------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("account_id",), {"account_id": None}),
        (("netns",), {"netns": None}),
        (("instance_profile",), {"instance_profile": None}),
        (("instance_profile", "role_name"), {"role_name": None}),
        (("metadata_options",), {"metadata_options": DEFAULT_METADATA_OPTIONS}),
        (("metadata_options", "http_tokens"), {"http_tokens": HttpTokens.REQUIRED}),
        (("metadata_options", "http_put_response_hop_limit"), {"hop_limit": 1}),
        (("metadata_options", "http_endpoint"), {"http_endpoint": HttpEndpoint.ENABLED}),
        (("metadata", "ami-id"), {"ami_id": None}),
        (("metadata", "launch-time"), {"launch_time": None}),
        (("metadata", "account-id"), {"metadata_account_id": None}),
        (("user_data",), {"user_data": None}),
        (("public_keys",), {"public_keys": ()}),
        (("network",), {"network": None}),
        (("network", "security_groups"), {"security_groups": ()}),
        (("tags",), {"tags": None}),
        (("identity",), {"identity": None}),
        (("identity", "rsa2048"), {"rsa2048": None}),
    ],
)
def test_a_missing_optional_field_takes_its_default(
    path: tuple[str, ...], expected: dict[str, object]
) -> None:
    wire = controller_instance()
    wire["metadata_options"]["http_tokens"] = "optional"  # unlike the default
    wire["metadata_options"]["http_put_response_hop_limit"] = 3
    wire["metadata_options"]["http_endpoint"] = "disabled"
    target = wire
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    parsed = parse_one(wire)
    profile, options = parsed.instance_profile, parsed.metadata_options
    found = {
        "account_id": parsed.account_id,
        "netns": parsed.netns,
        "instance_profile": profile,
        "role_name": profile.role_name if profile else "(no profile)",
        "metadata_options": options,
        "http_tokens": options.http_tokens,
        "hop_limit": options.http_put_response_hop_limit,
        "http_endpoint": options.http_endpoint,
        "ami_id": parsed.metadata.ami_id,
        "launch_time": parsed.metadata.launch_time,
        "metadata_account_id": parsed.metadata.account_id,
        "user_data": parsed.user_data,
        "public_keys": parsed.public_keys,
        "network": parsed.network,
        "security_groups": parsed.network.security_groups if parsed.network else "(none)",
        "tags": parsed.tags,
        "identity": parsed.identity,
        "rsa2048": parsed.identity.rsa2048 if parsed.identity else "(none)",
    }
    assert {key: found[key] for key in expected} == expected


def test_null_optional_fields_are_the_same_as_missing_ones() -> None:
    wire = controller_instance()
    for key in ("account_id", "netns", "instance_profile", "metadata_options"):
        wire[key] = None
    wire["metadata"]["ami-id"] = None
    parsed = parse_one(wire)
    assert (parsed.account_id, parsed.netns, parsed.instance_profile) == (None, None, None)
    assert parsed.metadata_options == DEFAULT_METADATA_OPTIONS
    assert parsed.metadata.ami_id is None


def test_an_error_answer_without_a_message_has_an_empty_one() -> None:
    assert parse_error({"error": "NotFound"}) == ErrorAnswer("NotFound", "")


# -- missing required fields and wrong types: the error names the field ------------------------


def without(wire: dict[str, Any], *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(wire)
    target = changed
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return changed


def replaced(wire: dict[str, Any], value: object, *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(wire)
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return changed


INSTANCE_ERRORS = [
    # missing
    (without(controller_instance(), "instance_id"), "instance_id: missing"),
    (without(controller_instance(), "metadata"), "metadata: missing"),
    (without(controller_instance(), "metadata", "instance-id"), "metadata.instance-id: missing"),
    (without(controller_instance(), "instance_profile", "arn"), "instance_profile.arn: missing"),
    (without(controller_instance(), "instance_profile", "id"), "instance_profile.id: missing"),
    # wrong types
    (replaced(controller_instance(), 42, "instance_id"), "instance_id: must be a string (got 42)"),
    (
        replaced(controller_instance(), ["rc-x"], "netns"),
        "netns: must be a string or null (got ['rc-x'])",
    ),
    (replaced(controller_instance(), 7, "account_id"), "account_id: must be a string or null"),
    (replaced(controller_instance(), "web", "instance_profile"), "instance_profile: must be an"),
    (
        replaced(controller_instance(), 7, "instance_profile", "role_name"),
        "instance_profile.role_name: must be a string or null (got 7)",
    ),
    (replaced(controller_instance(), [], "metadata_options"), "metadata_options: must be an"),
    (
        replaced(controller_instance(), 7, "metadata_options", "http_tokens"),
        'metadata_options.http_tokens: must be "optional" or "required" (got 7)',
    ),
    (
        replaced(controller_instance(), "on", "metadata_options", "http_endpoint"),
        'metadata_options.http_endpoint: must be "enabled" or "disabled" (got \'on\')',
    ),
    (
        replaced(controller_instance(), "2", "metadata_options", "http_put_response_hop_limit"),
        "metadata_options.http_put_response_hop_limit: must be an integer from 1 to 64",
    ),
    (
        replaced(controller_instance(), True, "metadata_options", "http_put_response_hop_limit"),
        "metadata_options.http_put_response_hop_limit: must be an integer",
    ),
    (
        replaced(controller_instance(), 65, "metadata_options", "http_put_response_hop_limit"),
        "metadata_options.http_put_response_hop_limit: must be an integer from 1 to 64 (got 65)",
    ),
    (replaced(controller_instance(), None, "metadata"), "metadata: must be an object (got None)"),
    (replaced(controller_instance(), ["x"], "metadata", "ami-id"), "metadata.ami-id: must be a"),
    (
        replaced(controller_instance(), True, "metadata", "ami-launch-index"),
        "metadata.ami-launch-index: must be a string (got True)",
    ),
    (
        replaced(controller_instance(), "soon", "metadata", "launch-time"),
        "metadata.launch-time: must be a timestamp (got 'soon')",
    ),
    (
        replaced(controller_instance(), "", "metadata", "instance-id"),
        "metadata.instance-id: must not be empty",
    ),
    (without(controller_instance(), "network", "mac"), "network.mac: missing"),
    (
        replaced(controller_instance(), "0E:49:61:0F:C3:11", "network", "mac"),
        "network.mac: must be a lower-case MAC address",
    ),
    (
        replaced(controller_instance(), ["default", 3], "network", "security_groups"),
        "network.security_groups[1]: must be a string (got 3)",
    ),
    (replaced(controller_instance(), "#!/bin/sh", "user_data"), "user_data: must be base64"),
    (
        replaced(controller_instance(), "A" * 21848, "user_data"),
        "user_data: must be at most 16384 bytes (got 16386)",
    ),
    (
        replaced(controller_instance(), [{"name": "ops"}], "public_keys"),
        "public_keys[0].openssh_key: missing",
    ),
    (
        replaced(controller_instance(), [{"key": "", "value": "x"}], "tags"),
        "tags[0].key: must not be empty",
    ),
    (
        replaced(controller_instance(), [{"key": "k", "value": ""}] * 51, "tags"),
        "tags: must have at most 50 items (got 51)",
    ),
    (without(controller_instance(), "identity", "document"), "identity.document: missing"),
    ("i-0123", "must be an object (got 'i-0123')"),
]


@pytest.mark.parametrize(("wire", "message"), INSTANCE_ERRORS)
def test_an_instance_that_is_not_an_assignment_is_refused_naming_the_field(
    wire: Any, message: str
) -> None:
    with pytest.raises(MessageError) as refused:
        parse_instance(wire)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(("wire", "message"), INSTANCE_ERRORS)
def test_in_an_answer_only_the_broken_instance_is_refused_and_named_by_its_place(
    wire: Any, message: str
) -> None:
    good = [controller_instance(f"i-0000000{number}") for number in range(4)]
    parsed, refused = parse_assignments(answer(*good[:3], wire, good[3]))
    assert [instance.instance_id for instance in parsed.instances] == [
        "i-00000000",
        "i-00000001",
        "i-00000002",
        "i-00000003",
    ]
    assert len(refused) == 1
    prefix = "instances[3]: " if message.startswith("must") else "instances[3]."
    assert refused[0].reason.startswith(prefix + message)


def test_the_issues_example_message_is_exactly_as_given() -> None:
    good = [controller_instance(f"i-0000000{number}") for number in range(3)]
    bad = replaced(controller_instance(), 7, "metadata_options", "http_tokens")
    _, refused = parse_assignments(answer(*good, bad))
    assert refused == (
        RefusedInstance(
            INSTANCE_ID,
            'instances[3].metadata_options.http_tokens: must be "optional" or "required" (got 7)',
        ),
    )


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ({**controller_instance(), "metadata": None}, INSTANCE_ID),
        ({**controller_instance(), "instance_id": 42}, "42"),
        ({**controller_instance(), "instance_id": "x" * 200, "metadata": None}, "x" * 80),
        (without(controller_instance(), "instance_id"), "instances[0]"),
        ([1, 2], "instances[0]"),
    ],
)
def test_a_refused_instance_is_known_by_its_id_as_sent_or_else_its_place(
    item: object, key: str
) -> None:
    _, refused = parse_assignments(answer(item))  # type: ignore[arg-type]
    assert [refusal.key for refusal in refused] == [key]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ([], "the assignments answer must be a JSON object (got list)"),
        (None, "the assignments answer must be a JSON object (got NoneType)"),
        ({"instances": []}, "revision: missing"),
        ({"revision": 1}, "instances: missing"),
        ({"revision": "1", "instances": []}, "revision: must be an integer from 0 to"),
        ({"revision": 1.0, "instances": []}, "revision: must be an integer from 0 to"),
        ({"revision": True, "instances": []}, "revision: must be an integer from 0 to"),
        ({"revision": -1, "instances": []}, "revision: must be an integer from 0 to"),
        ({"revision": 2**63, "instances": []}, "revision: must be an integer from 0 to"),
        ({"revision": 1, "instances": {}}, "instances: must be a list (got {})"),
    ],
)
def test_an_assignments_answer_that_is_not_one_is_refused_whole_naming_the_field(
    wire: object, message: str
) -> None:
    with pytest.raises(MessageError) as refused:
        parse_assignments(wire)
    assert str(refused.value).startswith(message)


CREDENTIAL_KEYS = list(controller_credentials())


@pytest.mark.parametrize("key", CREDENTIAL_KEYS)
@pytest.mark.parametrize("broken", ["missing", "", 5, None, ["x"]])
def test_a_credentials_answer_with_a_field_missing_or_of_the_wrong_type_names_it(
    key: str, broken: object
) -> None:
    wire = controller_credentials()
    if broken == "missing":
        del wire[key]
    else:
        wire[key] = broken
    with pytest.raises(MessageError) as refused:
        parse_credentials(wire)
    assert refused.value.field == key
    assert str(refused.value).startswith(f"{key}: ")


@pytest.mark.parametrize("key", ["SecretAccessKey", "Token"])
def test_a_refused_secret_is_never_shown_only_its_type(key: str) -> None:
    wire = controller_credentials()
    wire[key] = [SECRET, TOKEN]
    with pytest.raises(MessageError) as refused:
        parse_credentials(wire)
    assert str(refused.value) == f"{key}: must be a non-empty string (got list)"
    assert SECRET not in str(refused.value) and TOKEN not in str(refused.value)


def test_a_credentials_answers_repr_never_shows_the_secret_or_the_token() -> None:
    shown = repr(parse_credentials(controller_credentials()))
    assert "ASIAHSSWQI6EANUNFWSX" in shown and SECRET not in shown and TOKEN not in shown


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("x", "the error answer must be a JSON object (got str)"),
        ({"message": "m"}, "error: missing"),
        ({"error": 403}, "error: must be a string (got 403)"),
        ({"error": "E", "message": 1}, "message: must be a string or null (got 1)"),
    ],
)
def test_an_error_answer_that_is_not_one_is_refused_naming_the_field(
    wire: object, message: str
) -> None:
    with pytest.raises(MessageError, match=f"^{re.escape(message)}$"):
        parse_error(wire)


# -- properties: whatever arrives, one error type naming a field --------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
INSTANCE_FIELDS = list(controller_instance())


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_json_is_an_answer_or_a_message_error(value: object) -> None:
    for parse in (parse_assignments, parse_instance, parse_credentials, parse_error):
        try:
            parse(value)
        except MessageError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(INSTANCE_FIELDS), JSON)
def test_a_field_replaced_by_any_json_is_read_or_refused_naming_that_field(
    key: str, value: object
) -> None:
    wire = {**controller_instance(), key: value}
    try:
        parsed = parse_instance(wire)
    except MessageError as error:
        assert error.field == key or error.field.startswith((f"{key}.", f"{key}["))
    else:
        assert parsed.to_wire().keys() == controller_instance().keys()


def test_a_message_error_seen_from_outside_prefixes_the_path() -> None:
    error = MessageError("http_tokens", "must be x")
    assert str(error.within("metadata_options").within("[3]").within("instances")) == (
        "instances[3].metadata_options.http_tokens: must be x"
    )
    assert str(MessageError("", "must be an object").within("metadata")) == (
        "metadata: must be an object"
    )
    assert isinstance(error, ValueError)


def test_options_made_from_plain_strings_become_the_enums() -> None:
    options = MetadataOptions("optional", 2, "disabled")  # type: ignore[arg-type]
    assert options == MetadataOptions(HttpTokens.OPTIONAL, 2, HttpEndpoint.DISABLED)
    with pytest.raises(MessageError, match=r"^http_tokens: "):
        MetadataOptions("sometimes")  # type: ignore[arg-type]
    with pytest.raises(MessageError, match=r"^http_put_response_hop_limit: "):
        MetadataOptions(http_put_response_hop_limit=0)
