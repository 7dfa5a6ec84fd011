"""botocore agrees: its own IMDS fetchers, run against ``respond``, get what a real EC2 gives.

No socket: botocore's HTTP session is replaced by one that turns each prepared request into an
:class:`ImdsRequest` (adding the ``Host`` header urllib3 would add), calls :func:`respond`, and
hands the answer back as an ``AWSResponse``. Everything else is botocore's code: the token PUT,
the v1 fallback on 403, the role-name and credentials requests, the JSON checks, the expiry
parsing (``strptime("%Y-%m-%dT%H:%M:%SZ")``), and the credential provider on top.

(``InstanceMetadataFetcher._is_valid_instance_metadata``, named in older botocore, is gone from
the installed 1.44; the checks it made are ``_contains_all_credential_fields`` and
``_evaluate_expiration``, exercised here through ``retrieve_iam_role_credentials``.)
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.credentials import InstanceMetadataProvider, RefreshableCredentials
from botocore.exceptions import MetadataRetrievalError
from botocore.utils import (
    InstanceMetadataFetcher,
    InstanceMetadataRegionFetcher,
    parse_timestamp,
)

from agent.imds.rules import ImdsRequest, InstanceView, respond
from common.timestamps import format_timestamp
from tests.unit.test_imds_rules import make_instance
from tests.unit.test_imds_tree import (
    ACCESS_KEY_ID,
    EXPIRATION,
    NOW,
    NOW_DATETIME,
    ROLE,
    SECRET,
    SESSION_TOKEN,
    credential_set,
)


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class InProcessSession:
    """Stands in for botocore's URLLib3Session: requests go to ``respond``, not a socket."""

    def __init__(
        self, instance: InstanceView, *extra_headers: tuple[str, str], now: float = NOW
    ) -> None:
        self.instance = instance
        self.extra_headers = extra_headers
        self.now = now
        self.seen: list[tuple[str, str, int]] = []

    def send(self, request: AWSPreparedRequest) -> AWSResponse:
        url = urlsplit(request.url)
        target = url.path + (f"?{url.query}" if url.query else "")
        headers = [("Host", url.netloc), *request.headers.items(), *self.extra_headers]
        answer = respond(ImdsRequest(request.method, target, headers), self.instance, self.now)
        self.seen.append((request.method, target, answer.status))
        return AWSResponse(request.url, answer.status, dict(answer.headers), _Body(answer.body))


@pytest.fixture(autouse=True)
def frozen_botocore_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore compares Expiration with its own clock: make it read the tests' ``NOW``."""

    def now(remove_tzinfo: bool = True) -> dt.datetime:
        return NOW_DATETIME.replace(tzinfo=None) if remove_tzinfo else NOW_DATETIME

    monkeypatch.setattr("botocore.utils.get_current_datetime", now)


def fetcher(
    instance: InstanceView, *extra_headers: tuple[str, str], v1_disabled: bool = False
) -> tuple[InstanceMetadataFetcher, InProcessSession]:
    imds = InstanceMetadataFetcher(
        timeout=1, num_attempts=1, env={}, config={"ec2_metadata_v1_disabled": v1_disabled}
    )
    session = InProcessSession(instance, *extra_headers)
    imds._session = session
    return imds, session


EXPECTED = {
    "role_name": ROLE,
    "access_key": ACCESS_KEY_ID,
    "secret_key": SECRET,
    "token": SESSION_TOKEN,
    "expiry_time": format_timestamp(EXPIRATION),
}


@pytest.mark.parametrize("http_tokens", ["optional", "required"])
def test_botocore_retrieves_the_credentials_with_a_token(http_tokens: str) -> None:
    imds, session = fetcher(make_instance(http_tokens=http_tokens))
    assert imds.retrieve_iam_role_credentials() == EXPECTED
    assert [(method, status) for method, _, status in session.seen] == [
        ("PUT", 200),
        ("GET", 200),
        ("GET", 200),
    ]


def test_botocore_accepts_the_expiration_without_extending_it() -> None:
    # _evaluate_expiration logs and gives up on a timestamp it cannot strptime; a parsed one with
    # hours left is returned unchanged, so equality shows it parsed. Near expiry it is extended,
    # which only happens once botocore has parsed it.
    imds, _ = fetcher(make_instance())
    assert imds.retrieve_iam_role_credentials()["expiry_time"] == "2026-11-27T19:17:17Z"
    near = credential_set(Expiration=format_timestamp(NOW_DATETIME + dt.timedelta(minutes=5)))
    imds, _ = fetcher(make_instance(credentials=near))
    extended = imds.retrieve_iam_role_credentials()["expiry_time"]
    assert extended > format_timestamp(NOW_DATETIME + dt.timedelta(minutes=5))


def test_botocore_parses_the_expiration_to_the_right_instant() -> None:
    assert parse_timestamp(format_timestamp(EXPIRATION)) == EXPIRATION


def test_the_botocore_credential_provider_loads_refreshable_credentials() -> None:
    imds, _ = fetcher(make_instance(http_tokens="required"))
    credentials = InstanceMetadataProvider(iam_role_fetcher=imds).load()
    assert isinstance(credentials, RefreshableCredentials)
    assert credentials._expiry_time == EXPIRATION
    credentials._time_fetcher = lambda: NOW_DATETIME  # its clock, not the wall clock
    assert not credentials.refresh_needed()
    frozen = credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (
        ACCESS_KEY_ID,
        SECRET,
        SESSION_TOKEN,
    )


def test_botocore_falls_back_to_v1_when_the_token_put_is_refused_in_optional_mode() -> None:
    # A hop-limited or proxied PUT is refused with 403; botocore then tries IMDSv1.
    imds, session = fetcher(make_instance(strict_proxy=False), ("X-Forwarded-For", "10.0.0.9"))
    assert imds.retrieve_iam_role_credentials() == EXPECTED
    assert session.seen[0] == ("PUT", "/latest/api/token", 403)


def test_line_30_behind_a_forwarding_proxy_v1_disabled_botocore_gets_nothing() -> None:
    imds, session = fetcher(make_instance(), ("X-Forwarded-For", "10.0.0.9"), v1_disabled=True)
    with pytest.raises(MetadataRetrievalError):
        imds.retrieve_iam_role_credentials()
    assert session.seen == [("PUT", "/latest/api/token", 403)]


def test_behind_a_forwarding_proxy_with_v1_allowed_botocore_still_gets_nothing() -> None:
    imds, session = fetcher(make_instance(), ("X-Forwarded-For", "10.0.0.9"))
    assert imds.retrieve_iam_role_credentials() == {}
    assert {status for _, _, status in session.seen} == {403}


def test_required_mode_refuses_botocore_when_its_token_put_is_refused() -> None:
    imds, _ = fetcher(make_instance(http_tokens="required", strict_proxy=False), ("Via", "x"))
    # Via alone does not stop the PUT without strict_proxy: the token is issued and used.
    assert imds.retrieve_iam_role_credentials() == EXPECTED


def test_a_disabled_endpoint_gives_botocore_nothing() -> None:
    imds, _ = fetcher(make_instance(http_endpoint="disabled"))
    assert imds.retrieve_iam_role_credentials() == {}


def test_unavailable_credentials_give_botocore_nothing_rather_than_bad_ones() -> None:
    imds, session = fetcher(make_instance(credentials=None))
    assert imds.retrieve_iam_role_credentials() == {}
    assert session.seen[-1] == ("GET", "/latest/meta-data/iam/security-credentials/", 404)


def test_expired_credentials_are_never_handed_to_botocore() -> None:
    imds, _ = fetcher(make_instance())
    imds._session = InProcessSession(make_instance(), now=EXPIRATION.timestamp())
    assert imds.retrieve_iam_role_credentials() == {}


def test_no_role_gives_botocore_nothing() -> None:
    imds, session = fetcher(make_instance(instance_profile=None))
    assert imds.retrieve_iam_role_credentials() == {}
    assert session.seen[-1] == ("GET", "/latest/meta-data/iam/security-credentials/", 404)


def test_botocore_reads_the_region_from_the_availability_zone() -> None:
    region = InstanceMetadataRegionFetcher(timeout=1, num_attempts=1, env={})
    region._session = InProcessSession(make_instance(http_tokens="required"))
    assert region.retrieve_region() == "rc-east-1"


def test_botocore_logs_no_imds_trouble_on_the_happy_path(caplog: pytest.LogCaptureFixture) -> None:
    imds, _ = fetcher(make_instance(http_tokens="required"))
    with caplog.at_level(logging.DEBUG, logger="botocore.utils"):
        imds.retrieve_iam_role_credentials()
    assert not [
        record for record in caplog.records if "Metadata service returned" in record.message
    ]
    assert not [record for record in caplog.records if "Unable to parse" in record.message]
