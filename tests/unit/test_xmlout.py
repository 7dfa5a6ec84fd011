"""The Query protocol's output side: our XML as AWS writes it, and as botocore reads it back.

The botocore tests are the ones that matter: an SDK must parse what we send into the values we
meant, with no help from us.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.parsers import EC2QueryParser, QueryParser
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.xmlout import (
    _NOT_XML,
    NAMESPACES,
    ec2_error,
    ec2_response,
    format_time,
    query_error,
    query_response,
    xml_text,
)

IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
REQUEST_ID = "c2a6b9a4-5c4e-4f6b-9d1e-0d4f7c1e2a3b"

ROLE: dict[str, Any] = {
    "Path": "/app/",
    "RoleName": "web",
    "RoleId": "AROAABCDEFGHIJKLMNOPQ",
    "Arn": "arn:aws:iam::111111111111:role/app/web",
    "CreateDate": "2024-05-01T12:00:00Z",
    "AssumeRolePolicyDocument": "%7B%22Version%22%3A%222012-10-17%22%7D",
    "Description": None,
    "MaxSessionDuration": 3600,
}


def parse(body: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(body)


def iam(path: str) -> str:
    """An ElementTree path in the IAM namespace: ``a/b`` -> ``{ns}a/{ns}b``."""
    return "/".join(f"{{{IAM_NS}}}{step}" for step in path.split("/"))


def role_result(**changes: Any) -> bytes:
    return query_response("iam", "GetRole", {"Role": {**ROLE, **changes}}, REQUEST_ID)


# IAM/STS success bodies


def test_response_root_is_action_response_in_the_iam_namespace() -> None:
    assert parse(role_result()).tag == f"{{{IAM_NS}}}GetRoleResponse"


@pytest.mark.parametrize("service", ["iam", "sts"])
def test_response_uses_the_services_namespace(service: str) -> None:
    body = query_response(service, "Anything", {}, REQUEST_ID)
    assert parse(body).tag == f"{{{NAMESPACES[service]}}}AnythingResponse"


def test_result_is_wrapped_in_action_result() -> None:
    root = parse(role_result())
    assert root.find(iam("GetRoleResult/Role/RoleName")).text == "web"  # type: ignore[union-attr]


def test_response_metadata_carries_the_request_id() -> None:
    root = parse(role_result())
    assert root.findtext(iam("ResponseMetadata/RequestId")) == REQUEST_ID


def test_result_of_none_gives_only_response_metadata() -> None:
    root = parse(query_response("iam", "DeleteRole", None, REQUEST_ID))
    assert [child.tag for child in root] == [iam("ResponseMetadata")]


def test_members_keep_their_order() -> None:
    role = parse(role_result()).find(iam("GetRoleResult/Role"))
    assert [child.tag for child in role] == [  # type: ignore[union-attr]
        iam(name) for name, value in ROLE.items() if value is not None
    ]


def test_none_members_are_omitted() -> None:
    root = parse(role_result(Description=None))
    assert root.find(iam("GetRoleResult/Role/Description")) is None


def test_list_items_become_member_elements() -> None:
    body = query_response("iam", "ListRolePolicies", {"PolicyNames": ["a", "b"]}, REQUEST_ID)
    names = parse(body).find(iam("ListRolePoliciesResult/PolicyNames"))
    assert [(child.tag, child.text) for child in names] == [  # type: ignore[union-attr]
        (iam("member"), "a"),
        (iam("member"), "b"),
    ]


def test_empty_list_is_an_empty_element() -> None:
    body = query_response("iam", "ListRoles", {"Roles": [], "IsTruncated": False}, REQUEST_ID)
    roles = parse(body).find(iam("ListRolesResult/Roles"))
    assert roles is not None
    assert list(roles) == []


@pytest.mark.parametrize(("value", "text"), [(True, "true"), (False, "false")])
def test_booleans_are_lower_case_words(value: bool, text: str) -> None:
    body = query_response("iam", "ListRoles", {"IsTruncated": value}, REQUEST_ID)
    assert parse(body).findtext(iam("ListRolesResult/IsTruncated")) == text


def test_integers_are_decimal_text() -> None:
    assert parse(role_result()).findtext(iam("GetRoleResult/Role/MaxSessionDuration")) == "3600"


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC), "2024-05-01T12:00:00Z"),
        (datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=UTC), "2024-05-01T12:00:00Z"),
        (
            datetime(2024, 5, 1, 14, 30, 5, tzinfo=timezone(timedelta(hours=2))),
            "2024-05-01T12:30:05Z",
        ),
        (
            datetime(2024, 1, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=-5))),
            "2024-01-01T05:00:00Z",
        ),
    ],
)
def test_datetimes_are_utc_seconds_with_z(moment: datetime, text: str) -> None:
    assert format_time(moment) == text
    body = role_result(CreateDate=moment)
    assert parse(body).findtext(iam("GetRoleResult/Role/CreateDate")) == text


@pytest.mark.parametrize(
    "text",
    [
        "a < b",
        "a & b",
        "a > b",
        "<Role>injected</Role>",
        "&amp; already escaped",
        "quotes \" and '",
        "ünïcödé 日本語",
    ],
)
def test_text_round_trips_through_an_xml_parser(text: str) -> None:
    body = role_result(Description=text)
    assert parse(body).findtext(iam("GetRoleResult/Role/Description")) == text


def test_carriage_return_in_text_survives_xml_parsing() -> None:
    # IAM allows CR in a role description; a raw CR is turned into LF by every XML parser.
    body = role_result(Description="line one\r\nline two\rend")
    assert parse(body).findtext(iam("GetRoleResult/Role/Description")) == (
        "line one\r\nline two\rend"
    )


def test_body_is_utf8() -> None:
    body = role_result(Description="ünïcödé")
    assert "ünïcödé".encode() in body


# EC2 success bodies


def test_ec2_response_puts_members_under_the_root_with_request_id() -> None:
    body = ec2_response("TerminateInstances", {"return": True}, REQUEST_ID)
    root = parse(body)
    assert root.tag == f"{{{EC2_NS}}}TerminateInstancesResponse"
    assert [(child.tag, child.text) for child in root] == [
        (f"{{{EC2_NS}}}requestId", REQUEST_ID),
        (f"{{{EC2_NS}}}return", "true"),
    ]


def test_ec2_list_items_become_item_elements() -> None:
    body = ec2_response("Describe", {"instanceSet": [{"instanceId": "i-1"}]}, REQUEST_ID)
    items = parse(body).find(f"{{{EC2_NS}}}instanceSet")
    assert [child.tag for child in items] == [f"{{{EC2_NS}}}item"]  # type: ignore[union-attr]


# Error bodies


@pytest.mark.parametrize(("sender_fault", "kind"), [(True, "Sender"), (False, "Receiver")])
def test_iam_error_type_says_whose_fault(sender_fault: bool, kind: str) -> None:
    root = parse(query_error("NoSuchEntity", "gone", sender_fault, REQUEST_ID))
    assert root.findtext(iam("Error/Type")) == kind


def test_iam_error_has_code_message_and_request_id() -> None:
    root = parse(
        query_error("NoSuchEntity", "The role with name web cannot be found.", True, REQUEST_ID)
    )
    assert root.tag == iam("ErrorResponse")
    assert root.findtext(iam("Error/Code")) == "NoSuchEntity"
    assert root.findtext(iam("Error/Message")) == "The role with name web cannot be found."
    assert root.findtext(iam("RequestId")) == REQUEST_ID


def test_iam_error_message_is_escaped() -> None:
    message = "Value '<a & b>' at 'roleName' failed"
    root = parse(query_error("ValidationError", message, True, REQUEST_ID))
    assert root.findtext(iam("Error/Message")) == message


def test_ec2_error_has_code_message_and_request_id() -> None:
    root = parse(
        ec2_error("InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist", REQUEST_ID)
    )
    assert root.tag == "Response"
    assert root.findtext("Errors/Error/Code") == "InvalidInstanceID.NotFound"
    assert root.findtext("Errors/Error/Message") == "The instance ID 'i-1' does not exist"
    assert root.findtext("RequestID") == REQUEST_ID


def test_ec2_error_message_is_escaped() -> None:
    message = "Value (<a & b>) for parameter iamInstanceProfile.name is invalid."
    root = parse(ec2_error("InvalidParameterValue", message, REQUEST_ID))
    assert root.findtext("Errors/Error/Message") == message


@pytest.mark.parametrize("character", ["\x00", "\x01", "\x08", "\x0b", "\x1f", "\ufffe"])
def test_iam_error_message_with_a_control_character_is_well_formed_xml(character: str) -> None:
    # Validation messages quote what the caller sent, and a form body can carry %01.
    message = f"1 validation error detected: Value 'a{character}b' at 'roleName' failed"
    root = parse(query_error("ValidationError", message, True, REQUEST_ID))
    assert root.findtext(iam("Error/Code")) == "ValidationError"


@pytest.mark.parametrize("character", ["\x00", "\x01", "\x1f"])
def test_ec2_error_message_with_a_control_character_is_well_formed_xml(character: str) -> None:
    message = f"Value (a{character}b) for parameter iamInstanceProfile.name is invalid."
    root = parse(ec2_error("InvalidParameterValue", message, REQUEST_ID))
    assert root.findtext("Errors/Error/Code") == "InvalidParameterValue"


# What botocore reads from our bytes

SESSION = botocore.session.get_session()
IAM_MODEL = SESSION.get_service_model("iam")
EC2_MODEL = SESSION.get_service_model("ec2")


def botocore_iam(action: str, body: bytes, status: int = 200) -> dict[str, Any]:
    shape = IAM_MODEL.operation_model(action).output_shape
    response = {"body": body, "headers": {}, "status_code": status}
    return QueryParser().parse(response, shape)  # type: ignore[no-any-return]


def botocore_ec2(action: str, body: bytes, status: int = 200) -> dict[str, Any]:
    shape = EC2_MODEL.operation_model(action).output_shape
    response = {"body": body, "headers": {}, "status_code": status}
    return EC2QueryParser().parse(response, shape)  # type: ignore[no-any-return]


EXPECTED_ROLE = {
    "Path": "/app/",
    "RoleName": "web",
    "RoleId": "AROAABCDEFGHIJKLMNOPQ",
    "Arn": "arn:aws:iam::111111111111:role/app/web",
    "CreateDate": datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC),
    "AssumeRolePolicyDocument": "%7B%22Version%22%3A%222012-10-17%22%7D",
    "MaxSessionDuration": 3600,
}


def test_botocore_reads_get_role() -> None:
    tagged = {**ROLE, "Description": "web tier", "Tags": [{"Key": "team", "Value": "a&b"}]}
    body = query_response("iam", "GetRole", {"Role": tagged}, REQUEST_ID)
    parsed = botocore_iam("GetRole", body)
    assert parsed["Role"] == {
        **EXPECTED_ROLE,
        "Description": "web tier",
        "Tags": [{"Key": "team", "Value": "a&b"}],
    }


def test_botocore_reads_the_request_id() -> None:
    parsed = botocore_iam("GetRole", role_result())
    assert parsed["ResponseMetadata"]["RequestId"] == REQUEST_ID


def test_botocore_reads_a_create_date_as_a_utc_datetime() -> None:
    parsed = botocore_iam("GetRole", role_result(CreateDate=datetime(2024, 5, 1, 12, tzinfo=UTC)))
    created = parsed["Role"]["CreateDate"]
    assert created == datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert created.utcoffset() == timedelta(0)


def test_botocore_reads_a_truncated_list_roles_page() -> None:
    second = {**ROLE, "RoleName": "worker", "RoleId": "AROAQPONMLKJIHGFEDCBA"}
    second["Arn"] = "arn:aws:iam::111111111111:role/app/worker"
    body = query_response(
        "iam",
        "ListRoles",
        {"Roles": [ROLE, second], "IsTruncated": True, "Marker": "djE6d29ya2Vy"},
        REQUEST_ID,
    )
    parsed = botocore_iam("ListRoles", body)
    assert parsed["IsTruncated"] is True
    assert parsed["Marker"] == "djE6d29ya2Vy"
    assert parsed["Roles"] == [
        EXPECTED_ROLE,
        {
            **EXPECTED_ROLE,
            "RoleName": "worker",
            "RoleId": "AROAQPONMLKJIHGFEDCBA",
            "Arn": "arn:aws:iam::111111111111:role/app/worker",
        },
    ]


def test_botocore_reads_the_last_list_roles_page() -> None:
    body = query_response("iam", "ListRoles", {"Roles": [], "IsTruncated": False}, REQUEST_ID)
    parsed = botocore_iam("ListRoles", body)
    assert (parsed["Roles"], parsed["IsTruncated"], "Marker" in parsed) == ([], False, False)


def test_botocore_reads_get_instance_profile_with_its_role() -> None:
    profile = {
        "Path": "/",
        "InstanceProfileName": "web-profile",
        "InstanceProfileId": "AIPAABCDEFGHIJKLMNOPQ",
        "Arn": "arn:aws:iam::111111111111:instance-profile/web-profile",
        "CreateDate": "2024-05-02T08:30:00Z",
        "Roles": [ROLE],
        "Tags": [{"Key": "env", "Value": "prod"}],
    }
    body = query_response("iam", "GetInstanceProfile", {"InstanceProfile": profile}, REQUEST_ID)
    parsed = botocore_iam("GetInstanceProfile", body)
    assert parsed["InstanceProfile"] == {
        "Path": "/",
        "InstanceProfileName": "web-profile",
        "InstanceProfileId": "AIPAABCDEFGHIJKLMNOPQ",
        "Arn": "arn:aws:iam::111111111111:instance-profile/web-profile",
        "CreateDate": datetime(2024, 5, 2, 8, 30, 0, tzinfo=UTC),
        "Roles": [EXPECTED_ROLE],
        "Tags": [{"Key": "env", "Value": "prod"}],
    }


def test_botocore_reads_an_iam_error() -> None:
    body = query_error(
        "NoSuchEntity", "The role with name <web> cannot be found.", True, REQUEST_ID
    )
    parsed = botocore_iam("GetRole", body, status=404)
    assert parsed["Error"] == {
        "Type": "Sender",
        "Code": "NoSuchEntity",
        "Message": "The role with name <web> cannot be found.",
    }
    assert parsed["ResponseMetadata"]["RequestId"] == REQUEST_ID


def test_botocore_reads_a_receiver_fault() -> None:
    body = query_error("ServiceFailure", "The store is unavailable.", False, REQUEST_ID)
    parsed = botocore_iam("ListRoles", body, status=500)
    assert (parsed["Error"]["Type"], parsed["Error"]["Code"]) == ("Receiver", "ServiceFailure")


def test_botocore_reads_an_iam_validation_error_quoting_a_control_character() -> None:
    message = (
        "1 validation error detected: Value 'a\x01b' at 'roleName' failed to satisfy constraint"
    )
    parsed = botocore_iam("GetRole", query_error("ValidationError", message, True, REQUEST_ID), 400)
    assert parsed["Error"]["Code"] == "ValidationError"


def test_botocore_reads_an_ec2_error() -> None:
    body = ec2_error(
        "InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist", REQUEST_ID
    )
    parsed = botocore_ec2("DescribeInstances", body, status=400)
    assert parsed["Error"] == {
        "Code": "InvalidInstanceID.NotFound",
        "Message": "The instance ID 'i-1' does not exist",
    }
    assert parsed["ResponseMetadata"]["RequestId"] == REQUEST_ID


def test_botocore_reads_an_ec2_association_list() -> None:
    body = ec2_response(
        "DescribeIamInstanceProfileAssociations",
        {
            "iamInstanceProfileAssociationSet": [
                {
                    "associationId": "iip-assoc-0123456789abcdef0",
                    "instanceId": "i-0123456789abcdef0",
                    "iamInstanceProfile": {
                        "arn": "arn:aws:iam::111111111111:instance-profile/web-profile",
                        "id": "AIPAABCDEFGHIJKLMNOPQ",
                    },
                    "state": "associated",
                    "timestamp": datetime(2024, 5, 3, 9, 0, 0, tzinfo=UTC),
                }
            ],
        },
        REQUEST_ID,
    )
    parsed = botocore_ec2("DescribeIamInstanceProfileAssociations", body)
    assert parsed["IamInstanceProfileAssociations"] == [
        {
            "AssociationId": "iip-assoc-0123456789abcdef0",
            "InstanceId": "i-0123456789abcdef0",
            "IamInstanceProfile": {
                "Arn": "arn:aws:iam::111111111111:instance-profile/web-profile",
                "Id": "AIPAABCDEFGHIJKLMNOPQ",
            },
            "State": "associated",
            "Timestamp": datetime(2024, 5, 3, 9, 0, 0, tzinfo=UTC),
        }
    ]
    assert parsed["ResponseMetadata"]["RequestId"] == REQUEST_ID


# --- the fast paths give what the general ones do -----------------------------------------------


@settings(max_examples=500)
@given(st.text())
def test_xml_text_escapes_any_text_as_the_general_rule_does(text: str) -> None:
    expected = escape(_NOT_XML.sub("\ufffd", text), {"\r": "&#13;"})
    assert xml_text(text) == expected


@settings(max_examples=300)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=9, minutes=30))]) | st.none(),
    )
)
def test_format_time_is_strftime_of_the_utc_moment(moment: datetime) -> None:
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    assert format_time(moment) == utc.strftime("%Y-%m-%dT%H:%M:%SZ")
