"""The tools sign what they send as botocore would, and the controller's checker accepts it.

botocore's SigV4Auth reads its own clock, so each case lets botocore sign first and then has our
client sign at the time botocore recorded (``request.context["timestamp"]``), as
tests/unit/test_sigv4.py does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreCredentials

from controller import sigv4
from controller.errors import SignatureDoesNotMatch
from controller.tools.client import FORM, VERSIONS, Client, Credentials, Settings, form_body
from tests.unit.test_tools_client import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    FakeService,
    iam_reply,
)

POLICY = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":["*"]}]}'
)


@dataclass(frozen=True)
class Case:
    name: str
    service: str
    endpoint: str
    action: str
    params: tuple[tuple[str, str], ...]
    token: str | None = None
    region: str = "us-east-1"


CASES = [
    Case("iam-with-port", "iam", "http://rolecall.test:8773/", "PutRolePolicy",
         (("RoleName", "s3access"), ("PolicyName", "s3star"), ("PolicyDocument", POLICY))),
    Case("iam-with-token", "iam", "http://rolecall.test:8773/", "CreateRole",
         (("RoleName", "r"), ("Path", "/a b/"), ("AssumeRolePolicyDocument", POLICY)),
         token=SESSION_TOKEN),
    Case("default-port-dropped", "iam", "http://rolecall.test:80/", "ListRoles",
         (("PathPrefix", "/ü~*+/"),)),
    Case("https-path", "iam", "https://rolecall.test/rolecall/api/", "GetRole",
         (("RoleName", "r"),), region="rc-west-2"),
    Case("ec2-run", "ec2", "http://rolecall.test:8773/", "RunInstances",
         (("ImageId", "emi-1"), ("MinCount", "1"), ("MaxCount", "2"),
          ("IamInstanceProfile.Arn", "arn:aws:iam::123456789012:instance-profile/s3access"))),
    Case("ec2-with-token", "ec2", "http://rolecall.test:8773/", "DescribeInstances",
         (("InstanceId.1", "i-0123"), ("Filter.1.Name", "instance-state-name"),
          ("Filter.1.Value.1", "running")), token=SESSION_TOKEN),
]  # fmt: skip


def client_for(case: Case, now: datetime, service: FakeService) -> Client:
    credentials = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, case.token)
    settings = Settings(case.service, case.endpoint, case.region, credentials)
    return Client(settings, session=service.session(), clock=lambda: now)


def botocore_signed(case: Case) -> tuple[AWSRequest, datetime]:
    """The same request signed by botocore, and the time it signed at."""
    body = form_body([("Action", case.action), ("Version", VERSIONS[case.service]), *case.params])
    request = AWSRequest(
        method="POST", url=case.endpoint, data=body, headers={"Content-Type": FORM}
    )
    credentials = BotocoreCredentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, case.token)
    SigV4Auth(credentials, case.service, case.region).add_auth(request)
    stamp = request.context["timestamp"]
    return request, datetime.strptime(stamp, sigv4.AMZ_DATE_FORMAT).replace(tzinfo=UTC)


def sent_by_our_client(case: Case, now: datetime) -> FakeService:
    service = FakeService(iam_reply(case.action))
    client_for(case, now, service).call(case.action, case.params)
    return service


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_our_authorization_header_equals_botocores(case: Case) -> None:
    theirs, signed_at = botocore_signed(case)
    ours = sent_by_our_client(case, signed_at).sent[0]
    assert ours.body == theirs.body
    assert ours.headers["X-Amz-Date"] == theirs.headers["X-Amz-Date"]
    assert ours.headers["Authorization"] == theirs.headers["Authorization"]
    if case.token:
        assert ours.headers["X-Amz-Security-Token"] == theirs.headers["X-Amz-Security-Token"]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_controller_verifies_what_our_client_puts_on_the_wire(case: Case) -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    sent = sent_by_our_client(case, now).sent[0]
    url = urlsplit(sent.url or "")
    body = sent.body if isinstance(sent.body, bytes) else (sent.body or "").encode()
    # Every header requests adds (Accept, Content-Length, Connection…) goes out unsigned.
    received = sigv4.HttpRequest("POST", url.path, url.query, tuple(sent.headers.items()), body)
    claim = sigv4.parse_request(received, now)
    sigv4.verify(claim, SECRET_ACCESS_KEY)
    assert (claim.access_key_id, claim.service, claim.region) == (
        ACCESS_KEY_ID,
        case.service,
        case.region,
    )
    assert claim.security_token == case.token
    with pytest.raises(SignatureDoesNotMatch):
        sigv4.verify(claim, SECRET_ACCESS_KEY + "x")
