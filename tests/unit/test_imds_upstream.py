"""Pass-through to an upstream metadata service, the pure rules (`agent.imds.passthrough`):
which requests may leave RoleCall, the trusted headers they carry, what the guest gets back.
The client and the metadata service's factory around them are tests/unit/test_upstream_client.py;
a guest against a real upstream server is tests/netns/test_upstream.py."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.imds.passthrough import (
    NEUTRON,
    OUTCOMES,
    HeaderScheme,
    Outcome,
    UpstreamAnswer,
    answer,
    classify,
    failure,
    forwardable_target,
    outgoing,
    sign,
    trusted_headers,
)
from agent.imds.rules import NOT_FOUND_PAGE, ImdsRequest

SECRET = b"metadata-proxy-secret"
INSTANCE_ID = "i-0123456789abcdef0"
ACCOUNT_ID = "123456789012"
ADDRESS = "10.1.2.3"
TRUSTED = trusted_headers(NEUTRON, SECRET, INSTANCE_ID, ACCOUNT_ID, ADDRESS)
HOST = ("Host", "169.254.169.254")


def get(target: str, *headers: tuple[str, str], method: str = "GET") -> ImdsRequest:
    return ImdsRequest(method, target, [HOST, *headers])


# -- the trusted headers -----------------------------------------------------------------------


def test_the_signature_is_novas_hmac_sha256_of_the_instance_id_known_answer() -> None:
    # The pair Nova's documentation shows (a metadata_proxy_shared_secret and an instance id)
    # and the signature Nova expects for it.
    assert (
        sign(b"deadbeef2eb84d8d", "32d0524b-314d-4594-b3a3-607e3f2354f8")
        == "6bcbe3885ae7efc49cef35b438efe29c95501f4a720a0c53ed000d8fcf04a605"
    )


def test_the_neutron_scheme_sends_the_instance_its_signature_account_and_address() -> None:
    assert dict(TRUSTED) == {
        "X-Instance-ID": INSTANCE_ID,
        "X-Instance-ID-Signature": sign(SECRET, INSTANCE_ID),
        "X-Tenant-ID": ACCOUNT_ID,
        "X-Forwarded-For": ADDRESS,
    }


def test_another_secret_gives_another_signature() -> None:
    assert sign(b"another-secret", INSTANCE_ID) != sign(SECRET, INSTANCE_ID)


def test_an_unknown_account_or_address_is_left_out_not_sent_empty() -> None:
    names = [name for name, _ in trusted_headers(NEUTRON, SECRET, INSTANCE_ID, None, None)]
    assert names == ["X-Instance-ID", "X-Instance-ID-Signature"]


def test_another_scheme_renames_the_headers_and_may_leave_some_out() -> None:
    scheme = HeaderScheme("X-Vm", None, "X-Vm-Sig", None)
    assert trusted_headers(scheme, SECRET, INSTANCE_ID, ACCOUNT_ID, ADDRESS) == (
        ("X-Vm", INSTANCE_ID),
        ("X-Vm-Sig", sign(SECRET, INSTANCE_ID)),
    )
    assert scheme.names() == ("X-Vm", "X-Vm-Sig")


# -- which requests go upstream ----------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/openstack/latest/meta_data.json",
        "/openstack/2018-08-27/network_data.json",
        "/openstack",
        "/latest/meta-data/something-upstream",
        "/2009-04-04/meta-data/kernel-id",
        "/latest/meta-data/placement/partition-number",
        "/openstack/latest/vendor_data2.json?format=json&x=%20y",
        "/latest/meta-data/iamnot",  # a segment that only starts with iam
    ],
)
def test_a_path_rolecall_does_not_own_is_forwarded_with_its_query(target: str) -> None:
    assert forwardable_target(get(target)) == target
    assert forwardable_target(get(target, method="HEAD")) == target


def test_the_fragment_is_not_sent() -> None:
    assert forwardable_target(get("/openstack/latest?a=1#part")) == "/openstack/latest?a=1"


@pytest.mark.parametrize(
    "target",
    [
        # the IAM tree in every spelling, known paths and made-up ones below it
        "/latest/meta-data/iam",
        "/latest/meta-data/iam/",
        "/latest/meta-data/iam/info",
        "/latest/meta-data/iam/security-credentials/web-role",
        "/latest/meta-data/iam/unknown-thing",
        "/latest/meta-data/iam/security-credentials-extended/nobody",
        "/2021-03-23/meta-data/iam/security-credentials/",
        "/1.0/meta-data/iam/x",
        "/latest//meta-data//iam//x",
        "/latest/meta-data/IAM/x",
        "/latest/meta-data/Iam/info",
        "/latest/meta-data/%69am/info",
        "/latest/meta-data/%49AM/info",
        "/latest/meta-data/iam%2Finfo",
        "/latest/meta-data/iam%2finfo",
        "/latest/meta-data/%2569am/info",  # encoded twice
        "/latest/meta-data/iam;x/info",
        "/latest/meta-data/x/../iam/info",
        "/latest/meta-data/./iam",
        "/latest/meta-data/security-credentials/web-role",
        "/openstack/latest/Security-Credentials-Extended",
        "/iam",
        # the token path, in any version or case
        "/latest/api/token",
        "/2021-03-23/api/token",
        "/latest/API/token",
        "/latest/%61pi/token",
        "/api",
        # what is not a plain origin-form path
        "http://169.254.169.254/openstack/latest",
        "*",
        "",
        "openstack/latest",
        "/latest\\meta-data",
        "/latest/%5Cmeta-data",
        "/openstack/%00",
        "/openstack/latest/with space",
        "/openstack/latest/é",
        "/openstack/latest?q=<x>",
        "/openstack/latest/..",
    ],
)
def test_iam_the_token_path_and_odd_targets_never_go_upstream(target: str) -> None:
    assert forwardable_target(get(target)) is None
    assert outgoing(get(target), TRUSTED) is None


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH", "OPTIONS", "get"])
def test_only_get_and_head_go_upstream(method: str) -> None:
    assert forwardable_target(get("/openstack/latest/meta_data.json", method=method)) is None


_SEGMENT = st.text(alphabet="iamIAMpt%2F69sxcuy-/.;", max_size=12)


@given(st.lists(_SEGMENT, max_size=6))
def test_nothing_forwarded_names_iam_or_api_however_often_it_is_decoded(
    segments: list[str],
) -> None:
    target = forwardable_target(get("/" + "/".join(segments)))
    if target is None:
        return
    for _ in range(3):
        target = unquote(target)
        for segment in target.split("/"):
            assert segment.lower() not in ("iam", "api", "..")
            assert not segment.lower().startswith("security-credentials")


# -- what is sent ------------------------------------------------------------------------------


def test_the_request_carries_the_trusted_headers_and_only_accept_and_user_agent() -> None:
    request = get(
        "/openstack/latest/meta_data.json",
        ("Accept", "application/json"),
        ("User-Agent", "Cloud-Init/22.4"),
        ("X-aws-ec2-metadata-token", "AQAEA-secret-ish-token"),
        ("Cookie", "session=1"),
        ("Authorization", "Bearer x"),
        ("X-Forwarded-For", "192.0.2.66"),
        ("Forwarded", "for=192.0.2.66"),
        ("Connection", "keep-alive"),
    )
    sent = outgoing(request, TRUSTED)
    assert sent is not None
    assert (sent.method, sent.target) == ("GET", "/openstack/latest/meta_data.json")
    assert sent.headers == (
        *TRUSTED,
        ("Accept", "application/json"),
        ("User-Agent", "Cloud-Init/22.4"),
    )


@pytest.mark.parametrize(
    "name", ["X-Instance-ID", "x-instance-id", "X-INSTANCE-ID", "X-Tenant-ID", "x-tenant-id"]
)
def test_a_guest_sent_trusted_header_is_stripped_the_agents_value_goes(name: str) -> None:
    request = get(
        "/openstack/latest/meta_data.json",
        (name, "i-other"),
        ("X-Instance-ID-Signature", sign(SECRET, "i-other")),
    )
    sent = outgoing(request, TRUSTED)
    assert sent is not None
    assert sent.headers == TRUSTED


def test_a_trusted_header_named_like_an_allowed_guest_header_keeps_the_agents_value() -> None:
    # The configuration refuses such a name; the rule holds even without that check.
    trusted = (("User-Agent", INSTANCE_ID),)
    sent = outgoing(get("/openstack", ("user-agent", "i-other")), trusted)
    assert sent is not None
    assert sent.headers == trusted


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "X-Instance-ID",
                    "x-instance-id",
                    "X-Tenant-ID",
                    "X-Instance-ID-Signature",
                    "X-Forwarded-For",
                    "Accept",
                    "User-Agent",
                    "X-aws-ec2-metadata-token",
                    "Host",
                ]
            ),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=20),
        ),
        max_size=10,
    )
)
def test_whatever_a_guest_sends_each_trusted_header_goes_once_with_the_agents_value(
    headers: list[tuple[str, str]],
) -> None:
    sent = outgoing(ImdsRequest("GET", "/openstack/latest", headers), TRUSTED)
    assert sent is not None
    for name, value in TRUSTED:
        assert [v for n, v in sent.headers if n.lower() == name.lower()] == [value]
    names = {name.lower() for name, _ in sent.headers}
    assert "x-aws-ec2-metadata-token" not in names
    assert "host" not in names


# -- what comes back ---------------------------------------------------------------------------


def header(response_headers: tuple[tuple[str, str], ...], name: str) -> str:
    return dict(response_headers)[name]


def test_a_2xx_is_passed_back_with_its_status_body_and_content_type() -> None:
    passed = answer(UpstreamAnswer(200, "application/json", b'{"uuid": "x"}'), head=False)
    assert (passed.status, passed.body) == (200, b'{"uuid": "x"}')
    assert passed.headers == (
        ("Content-Type", "application/json"),
        ("Content-Length", "13"),
        ("Server", "EC2ws"),
    )
    assert passed.reason == "upstream-answered"


@pytest.mark.parametrize("content_type", [None, "", "text/plain\x00", " lead", "x" * 300])
def test_a_missing_or_odd_content_type_becomes_octet_stream(content_type: str | None) -> None:
    passed = answer(UpstreamAnswer(200, content_type, b"data"), head=False)
    assert header(passed.headers, "Content-Type") == "application/octet-stream"


def test_a_head_answer_carries_the_length_upstream_declared_and_no_body() -> None:
    passed = answer(UpstreamAnswer(200, "text/plain", b"", declared_length=42), head=True)
    assert (passed.status, passed.body) == (200, b"")
    assert header(passed.headers, "Content-Length") == "42"


def test_an_upstream_404_is_rolecalls_own_404_page() -> None:
    passed = answer(UpstreamAnswer(404, "text/html", b"<h1>Nova says no</h1>"), head=False)
    assert (passed.status, passed.body) == (404, NOT_FOUND_PAGE)
    assert header(passed.headers, "Content-Type") == "text/html"
    assert passed.reason == "upstream-not-found"


@pytest.mark.parametrize("status", [400, 403, 409, 410, 429])
def test_another_4xx_is_passed_back(status: int) -> None:
    passed = answer(UpstreamAnswer(status, "text/plain", b"no"), head=False)
    assert (passed.status, passed.body, passed.reason) == (status, b"no", "upstream-refused")


@pytest.mark.parametrize(
    ("status", "label"),
    [(301, "redirect"), (302, "redirect"), (307, "redirect"), (500, "error"), (503, "error")],
)
def test_a_redirect_or_server_error_is_a_502_never_passed_on(status: int, label: str) -> None:
    passed = answer(UpstreamAnswer(status, "text/html", b"<a href=x>moved</a>"), head=False)
    assert passed.status == 502
    assert passed.reason == f"upstream-{label}"
    assert b"href" not in passed.body
    assert {name for name, _ in passed.headers} == {"Content-Type", "Content-Length", "Server"}


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome.UNREACHABLE, 502),
        (Outcome.TOO_LARGE, 502),
        (Outcome.ERROR, 502),
        (Outcome.REDIRECT, 502),
        (Outcome.TIMEOUT, 504),
    ],
)
def test_a_failure_is_its_status_with_one_line_of_text(outcome: Outcome, status: int) -> None:
    refused = failure(outcome, head=False)
    assert refused.status == status
    assert header(refused.headers, "Content-Type") == "text/plain"
    assert refused.body.startswith(b"the upstream metadata service")
    assert refused.body.endswith(b"\n") and refused.body.count(b"\n") == 1
    assert refused.reason == f"upstream-{outcome.label}"
    head = failure(outcome, head=True)
    assert (head.status, head.body) == (status, b"")
    assert header(head.headers, "Content-Length") == str(len(refused.body))


@pytest.mark.parametrize(
    "outcome", [Outcome.ANSWERED, Outcome.NOT_FOUND, Outcome.REFUSED, Outcome.CANCELLED]
)
def test_what_is_not_a_failure_has_no_failure_answer(outcome: Outcome) -> None:
    with pytest.raises(ValueError, match="not a failure"):
        failure(outcome, head=False)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.ANSWERED),
        (204, Outcome.ANSWERED),
        (404, Outcome.NOT_FOUND),
        (401, Outcome.REFUSED),
        (304, Outcome.REDIRECT),
        (500, Outcome.ERROR),
        (100, Outcome.ERROR),
        (600, Outcome.ERROR),
    ],
)
def test_each_status_has_one_outcome(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_every_outcome_has_its_own_label() -> None:
    assert len(set(OUTCOMES)) == len(Outcome) == 9
