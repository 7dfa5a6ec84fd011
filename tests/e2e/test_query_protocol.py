"""The Query protocol layer over real HTTP: authentication, dispatch, errors, limits.

Requests are built by hand and signed with botocore's own SigV4 signer, so the server is checked
against AWS's implementation rather than against our own signer.
"""

from __future__ import annotations

import datetime
import http.client
import socket
import xml.etree.ElementTree as ET
from unittest import mock
from urllib.parse import urlencode, urlsplit

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.e2e.conftest import Controller


def xml_error(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an AWS error body, IAM/STS or EC2 form, namespaced or not."""
    root = ET.fromstring(body)
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    return root.findtext(".//Error/Code") or "", root.findtext(".//Error/Message") or ""


def send(
    controller: Controller,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    parts = urlsplit(controller.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request(method, target, body=body, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def signed(
    controller: Controller,
    params: dict[str, str],
    *,
    service: str = "iam",
    secret: str | None = None,
    key: str | None = None,
    method: str = "POST",
    when: datetime.datetime | None = None,
) -> tuple[str, bytes, dict[str, str]]:
    """A Query request signed by botocore; returns (target, body, headers)."""
    credentials = Credentials(
        key or controller.access_key_id, secret or controller.secret_access_key
    )
    if method == "POST":
        request = AWSRequest(
            method="POST",
            url=controller.url + "/",
            data=urlencode(params),
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
    else:
        request = AWSRequest(method="GET", url=controller.url + "/?" + urlencode(params))
    if when is None:
        SigV4Auth(credentials, service, "us-east-1").add_auth(request)
    else:
        # botocore reads the clock inside add_auth; freezing it is the only way to sign "then".
        frozen = when.astimezone(datetime.UTC).replace(tzinfo=None)
        with mock.patch("botocore.auth.get_current_datetime", return_value=frozen):
            SigV4Auth(credentials, service, "us-east-1").add_auth(request)
    prepared = request.prepare()
    target = urlsplit(prepared.url)
    path = target.path + (f"?{target.query}" if target.query else "")
    return path, prepared.body or b"", dict(prepared.headers)


LIST_ROLES = {"Action": "ListRoles", "Version": "2010-05-08"}


def test_a_signed_post_is_answered_with_query_xml_and_a_request_id(controller: Controller) -> None:
    response = send(controller, "POST", *signed(controller, LIST_ROLES))
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/xml"
    root = ET.fromstring(response.body)  # type: ignore[attr-defined]
    namespace = "{https://iam.amazonaws.com/doc/2010-05-08/}"
    assert root.tag == f"{namespace}ListRolesResponse"
    assert root.find(f"{namespace}ListRolesResult/{namespace}IsTruncated") is not None
    request_id = root.findtext(f"{namespace}ResponseMetadata/{namespace}RequestId")
    assert request_id == response.getheader("x-amzn-RequestId")


def test_a_signed_get_with_query_string_is_served(controller: Controller) -> None:
    response = send(controller, "GET", *signed(controller, LIST_ROLES, method="GET"))
    assert response.status == 200


def test_a_presigned_url_is_served(controller: Controller) -> None:
    credentials = Credentials(controller.access_key_id, controller.secret_access_key)
    request = AWSRequest(method="GET", url=controller.url + "/?" + urlencode(LIST_ROLES))
    SigV4QueryAuth(credentials, "iam", "us-east-1", expires=60).add_auth(request)
    target = urlsplit(request.prepare().url)
    response = send(controller, "GET", f"{target.path}?{target.query}")
    assert response.status == 200, response.body  # type: ignore[attr-defined]


def test_an_unsigned_request_is_missing_authentication_token(controller: Controller) -> None:
    response = send(
        controller,
        "POST",
        "/",
        urlencode(LIST_ROLES).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 403
    assert xml_error(response.body)[0] == "MissingAuthenticationToken"  # type: ignore[attr-defined]


def test_an_unknown_access_key_is_invalid_client_token_id(controller: Controller) -> None:
    response = send(controller, "POST", *signed(controller, LIST_ROLES, key="AKIAAAAAAAAAAAAAAAAA"))
    assert response.status == 403
    assert xml_error(response.body)[0] == "InvalidClientTokenId"  # type: ignore[attr-defined]


def test_a_wrong_secret_is_signature_does_not_match(controller: Controller) -> None:
    response = send(controller, "POST", *signed(controller, LIST_ROLES, secret="x" * 40))
    assert response.status == 403
    code, message = xml_error(response.body)  # type: ignore[attr-defined]
    assert code == "SignatureDoesNotMatch"
    assert controller.secret_access_key not in message


def test_a_tampered_body_is_signature_does_not_match(controller: Controller) -> None:
    target, body, headers = signed(controller, LIST_ROLES)
    body = (body if isinstance(body, bytes) else body.encode()).replace(b"ListRoles", b"ListRolez")
    response = send(controller, "POST", target, body, headers)
    assert xml_error(response.body)[0] == "SignatureDoesNotMatch"  # type: ignore[attr-defined]


@pytest.mark.parametrize("minutes", [-16, 16])
def test_a_request_signed_outside_fifteen_minutes_is_expired(
    controller: Controller, minutes: int
) -> None:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=minutes)
    response = send(controller, "POST", *signed(controller, LIST_ROLES, when=when))
    assert response.status == 400
    assert xml_error(response.body)[0] == "RequestExpired"  # type: ignore[attr-defined]


def test_an_unknown_action_is_invalid_action(controller: Controller) -> None:
    response = send(
        controller, "POST", *signed(controller, {"Action": "FlyToTheMoon", "Version": "2010-05-08"})
    )
    assert response.status == 400
    code, message = xml_error(response.body)  # type: ignore[attr-defined]
    assert code == "InvalidAction"
    assert "FlyToTheMoon" in message


def test_a_request_without_action_names_the_missing_parameter(controller: Controller) -> None:
    response = send(controller, "POST", *signed(controller, {"Version": "2010-05-08"}))
    assert response.status == 400
    code, message = xml_error(response.body)  # type: ignore[attr-defined]
    assert code == "MissingParameter" and "Action" in message


def test_a_wrong_version_is_refused(controller: Controller) -> None:
    response = send(
        controller, "POST", *signed(controller, {"Action": "ListRoles", "Version": "2011-06-15"})
    )
    assert response.status == 400
    assert "2010-05-08" in xml_error(response.body)[1]  # type: ignore[attr-defined]


def test_the_service_comes_from_the_credential_scope(controller: Controller) -> None:
    response = send(controller, "POST", *signed(controller, LIST_ROLES, service="s3"))
    assert response.status == 400
    code, message = xml_error(response.body)  # type: ignore[attr-defined]
    assert code == "InvalidAction" and "'s3'" in message


def test_a_parameter_given_twice_is_malformed(controller: Controller) -> None:
    credentials = Credentials(controller.access_key_id, controller.secret_access_key)
    request = AWSRequest(
        method="POST",
        url=controller.url + "/?Action=ListRoles",
        data=urlencode(LIST_ROLES),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    SigV4Auth(credentials, "iam", "us-east-1").add_auth(request)
    prepared = request.prepare()
    response = send(controller, "POST", "/?Action=ListRoles", prepared.body, dict(prepared.headers))
    assert response.status == 400
    code, message = xml_error(response.body)  # type: ignore[attr-defined]
    assert code == "MalformedQueryString" and "Action" in message


def test_a_json_body_is_refused_clearly(controller: Controller) -> None:
    credentials = Credentials(controller.access_key_id, controller.secret_access_key)
    request = AWSRequest(
        method="POST",
        url=controller.url + "/",
        data=b'{"Action": "ListRoles"}',
        headers={"Content-Type": "application/json"},
    )
    SigV4Auth(credentials, "iam", "us-east-1").add_auth(request)
    prepared = request.prepare()
    response = send(controller, "POST", "/", prepared.body, dict(prepared.headers))
    assert response.status == 400
    assert xml_error(response.body)[0] == "MalformedQueryString"  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
def test_other_methods_are_405_with_allow(controller: Controller, method: str) -> None:
    response = send(controller, method, "/")
    assert response.status == 405
    assert response.getheader("Allow") == "GET, POST"
    assert xml_error(response.body)[0] == "MethodNotAllowed"  # type: ignore[attr-defined]


def test_an_announced_oversized_body_is_refused_before_it_is_sent(controller: Controller) -> None:
    parts = urlsplit(controller.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 50000000\r\n\r\nAction=ListRoles"
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert xml_error(body)[0] == "RequestEntityTooLarge"


def test_a_chunked_oversized_body_is_refused(controller: Controller) -> None:
    parts = urlsplit(controller.url)
    chunk = b"a" * 65536
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(40):  # 2.5 MiB, over the default 1 MiB limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while data := sock.recv(65536):
                reply += data
        except ConnectionResetError:
            pass
    assert reply.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    "target",
    ["/?%ff%fe=1", "/?Action=%E2%28", "/%00", "/?" + "a=1&" * 2000],
)
def test_garbage_requests_get_an_aws_error_never_a_traceback(
    controller: Controller, target: str
) -> None:
    response = send(controller, "GET", target)
    body: bytes = response.body  # type: ignore[attr-defined]
    assert 400 <= response.status < 500
    assert b"Traceback" not in body
    assert xml_error(body)[0]


def test_an_unsigned_x_amz_header_is_refused(controller: Controller) -> None:
    target, body, headers = signed(controller, LIST_ROLES)
    headers["X-Amz-Meta-Sneaky"] = "1"
    response = send(controller, "POST", target, body, headers)
    assert response.status == 400
    code, message = xml_error(response.body)  # type: ignore[attr-defined]
    assert code == "IncompleteSignature" and "x-amz-meta-sneaky" in message.lower()
