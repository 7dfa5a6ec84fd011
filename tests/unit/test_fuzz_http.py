"""Both HTTP ports fed mutated and random bytes (issue 10, "keep it found"): whatever arrives,
no exception escapes the protocol, and every answer is a whole HTTP/1.1 answer with a status the
port is allowed to give. The real-socket counterpart is tests/netns/test_fuzz.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from controller.api import ApiFactory
from tests.unit.test_api_http import Api, Connection, signed
from tests.unit.test_api_http import api as api
from tests.unit.test_imds_server import GET, Served
from tests.unit.test_imds_server import clock as clock

#: What the metadata service may answer (spec/imds.md), and the protocol's own refusals: a
#: malformed request 400, a head over its limits 414/431, a slow head 408.
IMDS_STATUSES = {200, 400, 401, 403, 404, 405, 408, 414, 431, 503}
#: What the public API may answer: AWS's errors (spec/iam-sts-ec2.md) and the protocol's own.
#: Never 5xx: ServiceFailure (503) and InternalFailure (500) mean the controller failed.
API_STATUSES = {200, 400, 401, 403, 404, 405, 408, 409, 413, 414, 431}
PUT = (
    b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
    b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"
)
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) [^\r\n]*\r\n")


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed request with bytes flipped, inserted, deleted or repeated; or random bytes."""

    def apply(seed: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(seed)
        for kind, position, chunk in edits:
            at = position % (len(data) + 1)
            if kind == 0 and data:  # flip one byte
                data[at % len(data)] ^= chunk[0] if chunk else 0x20
            elif kind == 1:  # insert
                data[at:at] = chunk
            elif kind == 2:  # delete
                del data[at : at + len(chunk) + 1]
            else:  # repeat a piece
                data[at:at] = bytes(data[at : at + 8]) * (len(chunk) + 1)
        return bytes(data)

    edit = st.tuples(st.integers(0, 3), st.integers(0, 4096), st.binary(min_size=1, max_size=12))
    return st.one_of(
        st.builds(apply, st.sampled_from(seeds), st.lists(edit, min_size=1, max_size=6)),
        st.binary(max_size=300),
    )


def statuses(answers: bytes) -> list[int]:
    """The status of every answer in ``answers``, checking each is whole (its body as long as
    its Content-Length says)."""
    found = []
    while answers:
        match = _STATUS_LINE.match(answers)
        assert match, f"not an HTTP/1.1 answer: {answers[:80]!r}"
        head, separator, rest = answers.partition(b"\r\n\r\n")
        assert separator, f"an answer without the end of its head: {answers[:200]!r}"
        length = re.search(rb"\r\nContent-Length: ([0-9]+)", head, re.IGNORECASE)
        size = int(length.group(1)) if length else 0
        assert len(rest) >= size, f"a body shorter than its Content-Length: {answers[:200]!r}"
        found.append(int(match.group(1)))
        answers = rest[size:]
    return found


@pytest.fixture
def api_factory(api: Api) -> Iterator[tuple[ApiFactory, Api]]:
    yield ApiFactory(api.resource, api.clock), api
    for call in api.clock.getDelayedCalls():
        call.cancel()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_metadata_port_answers_anything_with_a_status_it_may_give(
    clock: Clock,
    data: st.DataObject,
) -> None:
    served = Served(clock)
    try:
        pieces = data.draw(st.lists(mutated([GET, PUT, GET + PUT]), min_size=1, max_size=3))
        answers = b"".join(served.send(piece) for piece in pieces)
        clock.advance(30)  # past the head deadline: whatever was left half-sent is answered
        answers += bytes(served.transport.value())
        assert set(statuses(answers)) <= IMDS_STATUSES
    finally:
        served.close()
        for call in clock.getDelayedCalls():
            call.cancel()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_public_port_answers_anything_without_a_server_error(
    api_factory: tuple[ApiFactory, Api], data: st.DataObject
) -> None:
    factory, api = api_factory
    seeds = [
        signed(api, {"Action": "GetCallerIdentity", "Version": "2011-06-15"}),
        signed(api, {"Action": "ListRoles", "Version": "2010-05-08", "MaxItems": "5"}),
        b"GET /?Action=ListRoles&Version=2010-05-08 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ]
    connection = Connection(factory)
    try:
        for piece in data.draw(st.lists(mutated(seeds), min_size=1, max_size=3)):
            connection.protocol.dataReceived(piece)
        api.clock.advance(30)
        codes = statuses(bytes(connection.transport.value()))
        assert set(codes) <= API_STATUSES, codes
    finally:
        connection.close()


def test_the_fuzzers_can_fail() -> None:
    """The checks above reject what they must: a 500, a cut body, a line that is no answer."""
    checks: list[tuple[bytes, Any]] = [
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", {500}),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", AssertionError),
        (b"garbage", AssertionError),
    ]
    for answers, expected in checks:
        if expected is AssertionError:
            with pytest.raises(AssertionError):
                statuses(answers)
        else:
            assert set(statuses(answers)) == expected
            assert not set(statuses(answers)) <= API_STATUSES
