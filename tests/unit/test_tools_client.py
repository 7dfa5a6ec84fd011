"""The tools' client: where credentials, region and endpoint come from, how answers and errors
are read, what --debug shows. Also the fake service every tools test sends its requests to.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qsl

import pytest
import requests
from botocore.utils import percent_encode_sequence
from requests.structures import CaseInsensitiveDict

from controller.tools import client as tools_client
from controller.tools.client import (
    Client,
    Credentials,
    Settings,
    form_body,
    host_header,
    mask_header,
    mask_text,
    resolve_settings,
)
from controller.tools.command import Tool, main
from controller.tools.errors import ServiceError, ToolError
from controller.tools.xmldata import members, parse_error, parse_xml, result_data, to_data

ACCESS_KEY_ID = "AKIAROLECALLEXAMPLE1"
SECRET_ACCESS_KEY = "rOLEcALL/sEcReT+kEy=9876543210zyxwvuTSRQ"
SESSION_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDROLECALLtoken+/sessionEXAMPLE=="
ENDPOINT = "http://rolecall.test:8773/"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    "AWS_ENDPOINT_URL": ENDPOINT,
    "HOME": "/home/tester",
}
IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"


# The fake service and helpers the other tools tests import


Reply = tuple[int, bytes] | bytes | Exception


class FakeService(requests.adapters.BaseAdapter):
    """A requests transport that answers with canned replies in order and records every request
    exactly as it would have gone on the wire."""

    def __init__(self, *replies: Reply) -> None:
        super().__init__()
        self.replies = list(replies)
        self.sent: list[requests.PreparedRequest] = []

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: object
    ) -> requests.Response:
        self.sent.append(request)
        if not self.replies:
            raise AssertionError(f"unexpected request: {self.params(-1)}")
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        status, body = reply if isinstance(reply, tuple) else (200, reply)
        response = requests.Response()
        response.status_code = status
        response.reason = HTTPStatus(status).phrase
        response._content = body
        response.headers = CaseInsensitiveDict({"Content-Type": "text/xml"})
        response.request = request
        response.url = request.url or ""
        return response

    def close(self) -> None:
        pass

    def params(self, index: int) -> list[tuple[str, str]]:
        """The decoded form parameters of one request sent."""
        body = self.sent[index].body or b""
        text = body.decode() if isinstance(body, bytes) else body
        return parse_qsl(text, keep_blank_values=True)

    def actions(self) -> list[str]:
        return [dict(self.params(index))["Action"] for index in range(len(self.sent))]

    def session(self) -> requests.Session:
        session = requests.Session()
        session.mount("http://", self)
        session.mount("https://", self)
        return session


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    service: FakeService


def run_tool(
    tool: Tool,
    argv: Sequence[str],
    *replies: Reply,
    env: dict[str, str] | None = None,
    files: dict[str, str] | None = None,
) -> Outcome:
    """Run a tool against a fake service; what it printed and sent."""
    service = FakeService(*replies)
    stdout, stderr = io.StringIO(), io.StringIO()
    known = files or {}
    code = main(
        tool,
        list(argv),
        env=ENV if env is None else env,
        stdout=stdout,
        stderr=stderr,
        session=service.session(),
        clock=lambda: NOW,
        read=lambda path: known.get(str(path)),
    )
    return Outcome(code, stdout.getvalue(), stderr.getvalue(), service)


def iam_reply(action: str, result: str = "") -> bytes:
    """An IAM answer as AWS writes it; no ``<…Result>`` when ``result`` is empty."""
    inner = f"<{action}Result>{result}</{action}Result>" if result else ""
    return (
        f'<{action}Response xmlns="{IAM_NS}">{inner}<ResponseMetadata>'
        f"<RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId>"
        f"</ResponseMetadata></{action}Response>"
    ).encode()


def iam_error(code: str, message: str, status: int = 400) -> tuple[int, bytes]:
    return status, (
        f'<ErrorResponse xmlns="{IAM_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
        "<RequestId>4c8c2d71-ed4c-4b33-9c0d-1a2bEXAMPLE</RequestId></ErrorResponse>"
    ).encode()


def ec2_error(code: str, message: str, status: int = 400) -> tuple[int, bytes]:
    return status, (
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        "</Errors><RequestID>ea966190-f9aa-478e-9ede-EXAMPLE</RequestID></Response>"
    ).encode()


def settings(service: str = "iam", token: str | None = None) -> Settings:
    return Settings(
        service, ENDPOINT, "us-east-1", Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, token)
    )


def resolve(
    env: dict[str, str], files: dict[str, str] | None = None, service: str = "iam", **flags: str
) -> Settings:
    known = files or {}
    return resolve_settings(service, env=env, read=lambda path: known.get(str(path)), **flags)


NO_KEYS = {"AWS_ENDPOINT_URL": ENDPOINT, "HOME": "/home/tester"}
CREDENTIALS_FILE = "/home/tester/.aws/credentials"
CONFIG_FILE = "/home/tester/.aws/config"
SHARED = {
    CREDENTIALS_FILE: (
        "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = default-secret\n"
        "[rolecall]\naws_access_key_id = AKIAROLECALL\naws_secret_access_key = rc%secret\n"
        "[temporary]\naws_access_key_id = ASIATEMP\naws_secret_access_key = temp-secret\n"
        "aws_session_token = temp-token\n"
    ),
    CONFIG_FILE: (
        "[default]\nregion = eu-west-1\n"
        "[profile rolecall]\nregion = rc-east-1\nendpoint_url = http://config.test:8773\n"
        "[profile configured]\naws_access_key_id = AKIACONFIG\n"
        "aws_secret_access_key = config-secret\n"
    ),
}


# Credentials


def test_environment_keys_win_over_a_profile_named_by_aws_profile() -> None:
    found = resolve({**ENV, "AWS_PROFILE": "rolecall"}, SHARED).credentials
    assert (found.access_key_id, found.source) == (ACCESS_KEY_ID, "environment")


def test_a_profile_named_by_flag_ignores_environment_keys() -> None:
    found = resolve(ENV, SHARED, profile="rolecall").credentials
    assert found.access_key_id == "AKIAROLECALL"
    assert found.secret_access_key == "rc%secret"  # no interpolation of '%'


def test_aws_profile_picks_the_profile_of_the_shared_credentials_file() -> None:
    found = resolve({**NO_KEYS, "AWS_PROFILE": "rolecall"}, SHARED).credentials
    assert found.access_key_id == "AKIAROLECALL"
    assert found.source == f"{CREDENTIALS_FILE} [rolecall]"


def test_without_keys_or_profile_the_default_profile_is_used() -> None:
    assert resolve(NO_KEYS, SHARED).credentials.access_key_id == "AKIADEFAULT"


def test_aws_shared_credentials_file_moves_the_credentials_file() -> None:
    files = {
        "/etc/rc/creds": "[default]\naws_access_key_id = AKIAMOVED\naws_secret_access_key = s\n"
    }
    env = {**NO_KEYS, "AWS_SHARED_CREDENTIALS_FILE": "/etc/rc/creds"}
    assert resolve(env, files).credentials.access_key_id == "AKIAMOVED"


def test_keys_in_the_config_file_profile_are_used_when_the_credentials_file_has_none() -> None:
    found = resolve({**NO_KEYS, "AWS_PROFILE": "configured"}, SHARED).credentials
    assert (found.access_key_id, found.secret_access_key) == ("AKIACONFIG", "config-secret")


def test_a_session_token_comes_from_the_environment_or_the_profile() -> None:
    from_env = resolve({**ENV, "AWS_SESSION_TOKEN": SESSION_TOKEN}).credentials
    from_file = resolve({**NO_KEYS, "AWS_PROFILE": "temporary"}, SHARED).credentials
    assert from_env.session_token == SESSION_TOKEN
    assert from_file.session_token == "temp-token"


def test_credentials_keep_secrets_out_of_their_repr() -> None:
    found = resolve({**ENV, "AWS_SESSION_TOKEN": SESSION_TOKEN}).credentials
    assert SECRET_ACCESS_KEY not in repr(found) and SESSION_TOKEN not in repr(found)


@pytest.mark.parametrize(
    ("env", "files", "expected"),
    [
        (
            {**NO_KEYS, "AWS_ACCESS_KEY_ID": "AKIAONLY"},
            {},
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
        ),
        (
            {**NO_KEYS, "AWS_PROFILE": "nosuch"},
            SHARED,
            f"profile 'nosuch' is in neither {CREDENTIALS_FILE}",
        ),
        (NO_KEYS, {}, "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        (
            NO_KEYS,
            {CREDENTIALS_FILE: "[default]\naws_access_key_id = AKIAHALF\n"},
            f"{CREDENTIALS_FILE} [default] needs both aws_access_key_id and aws_secret_access_key",
        ),
        (
            NO_KEYS,
            {CREDENTIALS_FILE: "aws_access_key_id = x\n"},
            f"cannot parse {CREDENTIALS_FILE}",
        ),
    ],
    ids=["half-environment", "unknown-profile", "nothing", "half-profile", "unparsable-file"],
)
def test_missing_credentials_are_a_message_naming_what_to_set(
    env: dict[str, str], files: dict[str, str], expected: str
) -> None:
    with pytest.raises(ToolError) as raised:
        resolve(env, files)
    assert str(raised.value).startswith(expected)
    assert "\n" not in str(raised.value)


# Region and endpoint


@pytest.mark.parametrize(
    ("env", "flags", "region"),
    [
        ({**ENV, "AWS_REGION": "a-1", "AWS_DEFAULT_REGION": "b-1"}, {"region": "flag-1"}, "flag-1"),
        ({**ENV, "AWS_REGION": "a-1", "AWS_DEFAULT_REGION": "b-1"}, {}, "a-1"),
        ({**ENV, "AWS_DEFAULT_REGION": "b-1"}, {}, "b-1"),
        ({**ENV, "AWS_PROFILE": "rolecall"}, {}, "rc-east-1"),
        (ENV, {}, "eu-west-1"),
        ({**ENV, "AWS_CONFIG_FILE": "/nowhere"}, {}, "us-east-1"),
    ],
    ids=["flag", "aws-region", "aws-default-region", "profile", "default-profile", "us-east-1"],
)
def test_region_comes_from_flag_environment_profile_then_us_east_1(
    env: dict[str, str], flags: dict[str, str], region: str
) -> None:
    assert resolve(env, SHARED, **flags).region == region


BOTH_URLS = {
    **ENV,
    "AWS_ENDPOINT_URL": "http://general.test:1",
    "AWS_ENDPOINT_URL_IAM": "http://iam.test:2",
    "AWS_ENDPOINT_URL_EC2": "http://ec2.test:3",
}


@pytest.mark.parametrize(
    ("service", "env", "flags", "endpoint"),
    [
        ("iam", BOTH_URLS, {"url": "http://flag.test:9"}, "http://flag.test:9/"),
        ("iam", BOTH_URLS, {}, "http://iam.test:2/"),
        ("ec2", BOTH_URLS, {}, "http://ec2.test:3/"),
        ("ec2", {**ENV, "AWS_ENDPOINT_URL_IAM": "http://iam.test:2"}, {}, ENDPOINT),
        ("iam", {**ENV, "AWS_ENDPOINT_URL": "http://host.test/api"}, {}, "http://host.test/api"),
        (
            "iam",
            {**ENV, "AWS_ENDPOINT_URL": "", "AWS_PROFILE": "rolecall"},
            {},
            "http://config.test:8773/",
        ),
    ],
    ids=["flag", "service-variable", "ec2-variable", "general-variable", "path-kept", "profile"],
)
def test_endpoint_comes_from_flag_service_variable_general_variable_then_profile(
    service: str, env: dict[str, str], flags: dict[str, str], endpoint: str
) -> None:
    assert resolve(env, SHARED, service, **flags).endpoint == endpoint


def test_ignoring_configured_endpoints_leaves_only_the_flag() -> None:
    env = {**ENV, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert resolve(env, url="http://flag.test").endpoint == "http://flag.test/"
    with pytest.raises(ToolError, match="no endpoint"):
        resolve(env)


def test_a_missing_endpoint_is_a_message_naming_the_variables_and_the_flag() -> None:
    with pytest.raises(ToolError) as raised:
        resolve({**ENV, "AWS_ENDPOINT_URL": ""}, service="ec2")
    message = str(raised.value)
    assert "AWS_ENDPOINT_URL" in message and "AWS_ENDPOINT_URL_EC2" in message
    assert "-U/--url" in message


@pytest.mark.parametrize("url", ["127.0.0.1:8773", "ftp://host/", "http://", "http://h/?a=1"])
def test_an_endpoint_that_is_not_an_http_url_is_refused_naming_its_source(url: str) -> None:
    with pytest.raises(ToolError, match=r"^AWS_ENDPOINT_URL must be an http"):
        resolve({**ENV, "AWS_ENDPOINT_URL": url})


# Requests


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        ("http://rolecall.test:8773/", "rolecall.test:8773"),
        ("http://rolecall.test:80/", "rolecall.test"),
        ("https://rolecall.test:443/x/", "rolecall.test"),
        ("https://user@rolecall.test:8443/", "rolecall.test:8443"),
        ("http://[::1]:8773/", "[::1]:8773"),
    ],
)
def test_the_host_header_leaves_out_only_a_default_port(endpoint: str, host: str) -> None:
    assert host_header(endpoint) == host


def test_form_bodies_are_percent_encoded_as_botocore_encodes_them() -> None:
    pairs = [("Action", "CreateRole"), ("Doc", 'a b+c/~*="ü'), ("Empty", "")]
    assert form_body(pairs).decode() == percent_encode_sequence(pairs)


def test_a_call_posts_a_signed_form_with_action_and_version() -> None:
    service = FakeService(iam_reply("GetRole", "<Role><RoleName>r</RoleName></Role>"))
    client = Client(settings(token=SESSION_TOKEN), session=service.session(), clock=lambda: NOW)
    assert client.call("GetRole", [("RoleName", "r")]) == {"Role": {"RoleName": "r"}}
    sent = service.sent[0]
    assert (sent.method, sent.url) == ("POST", ENDPOINT)
    assert service.params(0) == [
        ("Action", "GetRole"),
        ("Version", "2010-05-08"),
        ("RoleName", "r"),
    ]
    assert sent.headers["X-Amz-Date"] == "20240501T120000Z"
    assert sent.headers["X-Amz-Security-Token"] == SESSION_TOKEN
    assert sent.headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20240501/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="
    )


def test_an_iam_error_becomes_a_service_error_with_its_code_and_message() -> None:
    service = FakeService(iam_error("NoSuchEntity", "The role with name x cannot be found.", 404))
    client = Client(settings(), session=service.session(), clock=lambda: NOW)
    with pytest.raises(ServiceError) as raised:
        client.call("GetRole", [("RoleName", "x")])
    error = raised.value
    assert (error.code, error.message, error.status) == (
        "NoSuchEntity",
        "The role with name x cannot be found.",
        404,
    )


def test_an_ec2_error_becomes_a_service_error_with_its_code_and_message() -> None:
    service = FakeService(
        ec2_error("InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist")
    )
    client = Client(settings("ec2"), session=service.session(), clock=lambda: NOW)
    with pytest.raises(ServiceError, match=r"^InvalidInstanceID.NotFound: The instance ID 'i-1'"):
        client.call("DescribeInstances", [("InstanceId.1", "i-1")])


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            (502, b"<html>bad gateway</html>"),
            f"{ENDPOINT} answered GetRole with HTTP 502 Bad Gateway",
        ),
        ((200, b"not xml"), f"{ENDPOINT} answered GetRole with HTTP 200 but no XML"),
        (
            requests.ConnectionError(
                "HTTPConnectionPool(host='rolecall.test', port=8773): Max retries exceeded "
                "(Caused by NewConnectionError(': Failed to establish a new connection: "
                "[Errno 111] Connection refused'))"
            ),
            f"cannot reach {ENDPOINT}: connection refused",
        ),
        (requests.ReadTimeout("read timed out"), f"cannot reach {ENDPOINT}: timed out"),
    ],
    ids=["html-error", "not-xml", "refused", "timeout"],
)
def test_answers_that_are_not_aws_errors_are_one_clear_line(reply: Reply, message: str) -> None:
    service = FakeService(reply)
    client = Client(settings(), session=service.session(), clock=lambda: NOW)
    with pytest.raises(ToolError) as raised:
        client.call("GetRole", [("RoleName", "x")])
    assert str(raised.value) == message
    assert not isinstance(raised.value, ServiceError)


def test_a_real_refused_connection_is_one_line_naming_the_endpoint() -> None:
    # Port 1 on loopback: nothing listens there, and nothing leaves this machine.
    unreachable = Settings("iam", "http://127.0.0.1:1/", "us-east-1", settings().credentials)
    with pytest.raises(ToolError, match=r"^cannot reach http://127.0.0.1:1/: connection refused$"):
        Client(unreachable, clock=lambda: NOW).call("ListRoles")


# XML


def test_iam_results_become_dicts_with_member_lists() -> None:
    body = iam_reply(
        "ListRoles",
        "<Roles><member><RoleName>a</RoleName></member><member><RoleName>b</RoleName></member>"
        "</Roles><IsTruncated>false</IsTruncated>",
    )
    root = parse_xml(body)
    assert root is not None
    assert result_data(root, "iam") == {
        "Roles": [{"RoleName": "a"}, {"RoleName": "b"}],
        "IsTruncated": "false",
    }


def test_an_action_without_a_result_gives_an_empty_dict() -> None:
    root = parse_xml(iam_reply("DeleteRole"))
    assert root is not None and result_data(root, "iam") == {}


def test_ec2_results_drop_the_request_id_and_read_item_lists() -> None:
    body = (
        f'<TerminateInstancesResponse xmlns="{EC2_NS}"><requestId>r-1</requestId>'
        "<instancesSet><item><instanceId>i-1</instanceId></item></instancesSet>"
        "</TerminateInstancesResponse>"
    ).encode()
    root = parse_xml(body)
    assert root is not None
    assert result_data(root, "ec2") == {"instancesSet": [{"instanceId": "i-1"}]}


def test_an_empty_list_reads_as_no_members() -> None:
    root = parse_xml(b"<A><Roles/><Names></Names></A>")
    assert root is not None
    data = to_data(root, "member")
    assert members(data["Roles"]) == [] and members(data["Names"]) == [] and members(None) == []


def test_error_bodies_that_are_not_aws_errors_parse_as_none() -> None:
    assert parse_error(b"<html><body>oops</body></html>") is None
    assert parse_error(b"\x00 not xml") is None


# --debug


def test_mask_header_hides_the_signature_and_token_but_keeps_the_access_key_id() -> None:
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20240501/us-east-1/iam/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "ab" * 32
    )
    masked = mask_header("Authorization", authorization)
    assert "ab" * 32 not in masked and masked.endswith("Signature=****")
    assert ACCESS_KEY_ID in masked
    assert mask_header("X-Amz-Security-Token", SESSION_TOKEN) == "****"
    assert mask_header("Content-Type", "text/xml") == "text/xml"


@pytest.mark.parametrize(
    "text",
    [
        f"<Credentials><AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>{SECRET_ACCESS_KEY}"
        f"</SecretAccessKey><SessionToken>{SESSION_TOKEN}</SessionToken></Credentials>",
        f"Action=X&SecretAccessKey={SECRET_ACCESS_KEY}&SessionToken={SESSION_TOKEN}&Name=n",
        f'{{"SecretAccessKey": "{SECRET_ACCESS_KEY}", "SessionToken":"{SESSION_TOKEN}"}}',
    ],
    ids=["xml", "form", "json"],
)
def test_mask_text_hides_secret_keys_and_session_tokens(text: str) -> None:
    masked = mask_text(text)
    assert SECRET_ACCESS_KEY not in masked and SESSION_TOKEN not in masked
    assert masked.count("****") == 2


def test_debug_shows_the_exchange_on_stderr_with_secrets_masked() -> None:
    secret_reply = iam_reply(
        "GetRole",
        f"<Role><RoleName>r</RoleName><SessionToken>{SESSION_TOKEN}x</SessionToken></Role>",
    )
    service = FakeService(secret_reply)
    debug = io.StringIO()
    client = Client(
        settings(token=SESSION_TOKEN), session=service.session(), clock=lambda: NOW, debug=debug
    )
    client.call("GetRole", [("RoleName", "r")])
    shown = debug.getvalue()
    assert f"> POST {ENDPOINT}" in shown
    assert "> Action=GetRole&Version=2010-05-08&RoleName=r" in shown
    assert "< HTTP 200 OK" in shown and "<RoleName>r</RoleName>" in shown
    assert "X-Amz-Security-Token: ****" in shown and "Signature=****" in shown
    signature = service.sent[0].headers["Authorization"].rpartition("Signature=")[2]
    for secret in (SECRET_ACCESS_KEY, SESSION_TOKEN, signature):
        assert secret not in shown


# The command runner


def _echo_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _call_get_role(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    client.call("GetRole", [("RoleName", "r")])


ECHO = Tool("iam-echo", "iam", "A tool for tests.", _echo_arguments, _call_get_role)


def test_a_bad_flag_is_one_line_on_stderr_and_exit_status_2() -> None:
    outcome = run_tool(ECHO, ["--bogus"])
    assert outcome.code == 2
    assert outcome.stderr == "iam-echo: unrecognized arguments: --bogus (see iam-echo --help)\n"
    assert outcome.service.sent == []


def test_missing_settings_are_one_line_on_stderr_and_exit_status_1() -> None:
    outcome = run_tool(ECHO, [], env={"HOME": "/home/tester"})
    assert outcome.code == 1
    assert outcome.stderr.startswith("iam-echo: no endpoint: set AWS_ENDPOINT_URL")
    assert outcome.stderr.count("\n") == 1


def test_a_service_error_is_one_line_with_the_aws_code() -> None:
    outcome = run_tool(ECHO, [], iam_error("AccessDenied", "User: x is not\nauthorized", 403))
    assert (outcome.code, outcome.stdout) == (1, "")
    assert outcome.stderr == "iam-echo: AccessDenied: User: x is not authorized\n"


def test_flags_choose_the_profile_region_and_url() -> None:
    outcome = run_tool(
        ECHO,
        ["--profile", "rolecall", "--region", "rc-west-2", "-U", "http://flag.test:1"],
        iam_reply("GetRole", "<Role/>"),
        files=SHARED,
    )
    assert outcome.code == 0
    sent = outcome.service.sent[0]
    assert sent.url == "http://flag.test:1/"
    assert (
        "Credential=AKIAROLECALL/20240501/rc-west-2/iam/aws4_request"
        in sent.headers["Authorization"]
    )
    assert sent.headers["User-Agent"].startswith("rolecall-tools/")


def test_the_home_directory_locates_the_default_shared_files(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = AKIAHOME\naws_secret_access_key = s\n"
    )
    found = resolve_settings(
        "iam",
        env={"HOME": str(tmp_path), "AWS_ENDPOINT_URL": ENDPOINT},
        read=tools_client.read_text,
    )
    assert found.credentials.access_key_id == "AKIAHOME"
