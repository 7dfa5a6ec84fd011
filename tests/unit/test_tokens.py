"""Stateless session tokens: sealing, unsealing, key rotation, tampering, expiry, sizes."""

from __future__ import annotations

import base64
import json
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import tokens
from controller.errors import ExpiredToken, InvalidClientTokenId
from controller.tokens import (
    DEFAULT_KEEP_FOR,
    EXPIRED_MESSAGE,
    INVALID_MESSAGE,
    PACKED_POLICY_ALLOWANCE,
    KeyRing,
    SessionClaims,
    TokenKey,
    new_credentials_ids,
    new_key,
    new_key_ring,
    packed_size_percent,
    seal,
    token_key_id,
    unseal,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ACCOUNT = "123456789012"
ROLE_ID = "AROA3XFRBF535PLBIFPI4"

#: A 500-character session policy of the usual kind.
POLICY_500 = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Read",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": ["arn:aws:s3:::acme-app-config", "arn:aws:s3:::acme-app-config/prod/*"],
            },
            {
                "Sid": "Order",
                "Effect": "Allow",
                "Action": ["dynamodb:GetItem", "dynamodb:Query"],
                "Resource": "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
            },
            {
                "Sid": "NoDel",
                "Effect": "Deny",
                "Action": "s3:DeleteObject",
                "Resource": "*",
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }
)


def assumed_role_claims(**changes: object) -> SessionClaims:
    access_key_id, secret = new_credentials_ids()
    claims = SessionClaims(
        access_key_id=access_key_id,
        secret_access_key=secret,
        account_id=ACCOUNT,
        principal_type="assumed-role",
        principal_arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/app-server/i-0123456789abcdef0",
        user_id=f"{ROLE_ID}:i-0123456789abcdef0",
        issuer_arn=f"arn:aws:iam::{ACCOUNT}:user/alice",
        role_id=ROLE_ID,
        session_policy=None,
        source_identity=None,
        chained=False,
        issued=NOW,
        expires=NOW + HOUR,
    )
    return replace(claims, **changes)  # type: ignore[arg-type]


def federated_claims() -> SessionClaims:
    access_key_id, secret = new_credentials_ids()
    return SessionClaims(
        access_key_id=access_key_id,
        secret_access_key=secret,
        account_id=ACCOUNT,
        principal_type="federated-user",
        principal_arn=f"arn:aws:sts::{ACCOUNT}:federated-user/bob",
        user_id=f"{ACCOUNT}:bob",
        issuer_arn=f"arn:aws:iam::{ACCOUNT}:root",
        role_id=None,
        session_policy=POLICY_500,
        source_identity="bob@example.com",
        chained=False,
        issued=NOW,
        expires=NOW + timedelta(hours=36),
        extra={"node": "compute-7"},
    )


def incompressible(length: int) -> str:
    """Text that DEFLATE cannot shrink much (base64 of seeded random bytes)."""
    return base64.b64encode(random.Random(length).randbytes(length)).decode()[:length]


def expect_invalid(token: str, ring: KeyRing, now: datetime = NOW) -> None:
    with pytest.raises(InvalidClientTokenId) as raised:
        unseal(token, ring, now)
    assert raised.value.message == INVALID_MESSAGE


RING = new_key_ring(NOW)
CLAIMS = assumed_role_claims()
TOKEN = seal(CLAIMS, RING)


# --- round trips ---------------------------------------------------------------------------------


def test_unseal_gives_back_the_sealed_claims() -> None:
    assert unseal(TOKEN, RING, NOW) == CLAIMS


def test_every_optional_claim_survives_the_round_trip() -> None:
    claims = replace(
        federated_claims(), chained=True, role_id="AROAEXAMPLE", extra={"instance_id": "i-1"}
    )
    assert unseal(seal(claims, RING), RING, NOW) == claims


def test_unsealed_times_are_utc() -> None:
    claims = unseal(TOKEN, RING, NOW)
    assert claims.issued.tzinfo is UTC
    assert claims.expires.tzinfo is UTC


def test_times_in_another_zone_come_back_as_the_same_instant() -> None:
    zone = timezone(timedelta(hours=5, minutes=30))
    claims = assumed_role_claims(issued=NOW.astimezone(zone), expires=(NOW + HOUR).astimezone(zone))
    assert unseal(seal(claims, RING), RING, NOW).expires == NOW + HOUR


def test_microseconds_survive_the_round_trip() -> None:
    claims = assumed_role_claims(expires=NOW + timedelta(seconds=900, microseconds=123456))
    assert unseal(seal(claims, RING), RING, NOW).expires.microsecond == 123456


def test_two_seals_of_the_same_claims_differ() -> None:
    assert seal(CLAIMS, RING) != seal(CLAIMS, RING)


def test_claims_extra_defaults_to_empty_and_cannot_be_changed() -> None:
    assert dict(CLAIMS.extra) == {}
    claims = federated_claims()
    with pytest.raises(TypeError):
        claims.extra["node"] = "elsewhere"  # type: ignore[index]


#: Sealed by format RC1 as first released, under a fixed test key. If this stops unsealing, the
#: format changed (field names, the DEFLATE dictionary, the layout): that needs a new prefix.
GOLDEN_KEY = TokenKey("5eed0001", bytes(range(32)), datetime(2024, 5, 1, tzinfo=UTC))
GOLDEN_TOKEN = (
    "RC1.Xu0AAQNMBOk9Eu-4Y_GKe8Nxzj7Gl9s9u7Fpbx3MFuSVkuV301FD-15cU1b5swae0bY-NGEZibNZvxHang9fU6l"
    "rn0Ni3P-rP4607-Hunasac5PaSkq1BiMQqVNRB40VioXUUYXwQsPb6IFpNYC3uproHBxbJXPiKRhdwCRbCFC37WvOAl"
    "VWaTgMcKDPBlJ2xY8eiJjnOUEUH9CJlTJvd24f170s-ojg-jRwWkTDLxCCq2VkrvnbFM0lGodTZyFzFJ0LruYFLTkG4MY"
)


def test_a_token_sealed_by_the_first_release_of_the_format_still_unseals() -> None:
    ring = KeyRing(GOLDEN_KEY.key_id, (GOLDEN_KEY,))
    claims = unseal(GOLDEN_TOKEN, ring, datetime(2024, 5, 1, 13, tzinfo=UTC))
    assert claims == SessionClaims(
        access_key_id="ASIAQ2RCGOLDENTOKEN7",
        secret_access_key="RoleCall/golden+token/secret0123456789ab",
        account_id=ACCOUNT,
        principal_type="assumed-role",
        principal_arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/app/i-0abc",
        user_id="AROAQ2RCEXAMPLEROLE1:i-0abc",
        issuer_arn=f"arn:aws:iam::{ACCOUNT}:root",
        role_id="AROAQ2RCEXAMPLEROLE1",
        session_policy=(
            '{"Version":"2012-10-17","Statement":'
            '[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}'
        ),
        source_identity="alice",
        chained=True,
        issued=datetime(2024, 5, 1, 12, tzinfo=UTC),
        expires=datetime(2024, 5, 1, 18, tzinfo=UTC),
        extra={"instance_id": "i-0abc", "node": "compute-1"},
    )


# --- the token text -------------------------------------------------------------------------------


def test_token_is_the_version_prefix_then_base64url_without_padding() -> None:
    assert re.fullmatch(r"RC1\.[A-Za-z0-9_-]+", TOKEN)


def test_token_names_the_active_key() -> None:
    assert token_key_id(TOKEN) == RING.active_id


def test_token_key_id_is_none_for_a_malformed_token() -> None:
    assert token_key_id("RC1.not a token") is None
    assert token_key_id("") is None


def test_token_does_not_show_the_secret_or_the_claims() -> None:
    blob = base64.urlsafe_b64decode(TOKEN[4:] + "==")
    assert CLAIMS.secret_access_key.encode() not in blob
    assert CLAIMS.access_key_id.encode() not in blob
    assert CLAIMS.secret_access_key not in TOKEN


def test_assumed_role_token_without_session_policy_is_about_520_characters() -> None:
    sizes = {len(seal(assumed_role_claims(), RING)) for _ in range(20)}
    print(f"assumed-role token without session policy: {sorted(sizes)} characters")
    assert max(sizes) < 560


def _plaintext(token: str, key: TokenKey) -> bytes:
    """What a token seals, opened by hand as the format says (no code of tokens.py)."""
    blob = base64.urlsafe_b64decode(token[4:] + "=" * (-len(token[4:]) % 4))
    key_id, nonce, sealed = blob[:4], blob[4:16], blob[16:]
    return AESGCM(key.secret).decrypt(nonce, sealed, b"RC1." + key_id)


def test_claims_without_a_session_policy_are_one_stored_deflate_block_any_reader_inflates() -> None:
    plaintext = _plaintext(TOKEN, RING.active())
    assert plaintext[0] == 0b001  # BFINAL 1, BTYPE 00: stored
    # As a reader that knows only compressed tokens inflates it:
    record = json.loads(zlib.decompressobj(-15, tokens._DICTIONARY).decompress(plaintext))
    assert record["k"] == CLAIMS.access_key_id and record["x"] == 1714568400_000000


def test_claims_with_a_session_policy_are_compressed_with_the_dictionary() -> None:
    claims = assumed_role_claims(session_policy=POLICY_500)
    plaintext = _plaintext(seal(claims, RING), RING.active())
    assert plaintext[0] & 0b110 != 0  # BTYPE 01 or 10: Huffman-coded
    text = zlib.decompressobj(-15, tokens._DICTIONARY).decompress(plaintext)
    assert json.loads(text)["P"] == POLICY_500
    assert len(plaintext) < len(text) / 2


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(lambda data: b"\x01" + len(data).to_bytes(2, "little") + bytes(2) + data,
                     id="wrong-complement"),
        pytest.param(lambda data: tokens._stored(data) + b"\x00", id="a-byte-after-it"),
        pytest.param(lambda data: tokens._stored(data)[:-1], id="a-byte-short"),
        pytest.param(lambda data: b"\x00" + tokens._stored(data)[1:], id="not-final"),
    ],
)  # fmt: skip
def test_a_stored_block_that_is_not_one_whole_final_block_is_an_invalid_token(
    stored: Callable[[bytes], bytes],
) -> None:
    text = zlib.decompressobj(-15, tokens._DICTIONARY).decompress(tokens._pack(CLAIMS))
    assert unseal(tokens._encrypt(tokens._stored(text), RING.active()), RING, NOW) == CLAIMS
    expect_invalid(tokens._encrypt(stored(text), RING.active()), RING)


def test_assumed_role_token_with_a_500_character_policy_is_under_half_a_kibibyte() -> None:
    assert len(POLICY_500) == 500
    sizes = {len(seal(assumed_role_claims(session_policy=POLICY_500), RING)) for _ in range(20)}
    print(f"assumed-role token with a 500-character session policy: {sorted(sizes)} characters")
    assert max(sizes) < 512


def test_a_policy_that_fills_the_allowance_keeps_the_token_under_2_kib() -> None:
    # Incompressible text: the worst case for its packed size.
    policy = incompressible(1300)
    claims = assumed_role_claims(session_policy=policy)
    assert 95 <= packed_size_percent(claims) <= 100
    assert len(seal(claims, RING)) < 2048


# --- packed size ---------------------------------------------------------------------------------


def test_packed_size_is_zero_without_a_session_policy() -> None:
    assert packed_size_percent(CLAIMS) == 0


def test_packed_size_of_a_500_character_policy_is_a_small_percentage() -> None:
    percent = packed_size_percent(assumed_role_claims(session_policy=POLICY_500))
    assert 1 <= percent <= 30


def test_packed_size_grows_with_the_policy_and_goes_past_100_when_too_big() -> None:
    small = packed_size_percent(assumed_role_claims(session_policy='{"a":"b"}'))
    large = packed_size_percent(assumed_role_claims(session_policy=incompressible(2048)))
    assert 0 < small < large
    assert large > 100


def test_packed_size_rounds_up_against_the_allowance() -> None:
    policy = incompressible(200)
    compressed = len(tokens._compress(policy.encode()))
    expected = -(-compressed * 100 // PACKED_POLICY_ALLOWANCE)
    assert packed_size_percent(assumed_role_claims(session_policy=policy)) == expected


# --- keys and rotation ---------------------------------------------------------------------------


def test_token_sealed_with_an_old_key_unseals_after_rotation() -> None:
    rotated = RING.rotated(NOW, keep_for=DEFAULT_KEEP_FOR)
    assert rotated.active_id != RING.active_id
    assert unseal(TOKEN, rotated, NOW + timedelta(minutes=30)) == CLAIMS


def test_new_tokens_after_rotation_use_the_new_key() -> None:
    rotated = RING.rotated(NOW, keep_for=DEFAULT_KEEP_FOR)
    token = seal(CLAIMS, rotated)
    assert token_key_id(token) == rotated.active_id
    expect_invalid(token, RING)  # a replica that has not re-read the ring does not know it


def test_old_key_verifies_until_its_retire_after_and_not_after() -> None:
    long_lived = assumed_role_claims(expires=NOW + timedelta(days=30))
    token = seal(long_lived, RING)
    rotated = RING.rotated(NOW, keep_for=HOUR)
    old = rotated.get(RING.active_id)
    assert old is not None and old.retire_after == NOW + HOUR
    assert unseal(token, rotated, NOW + HOUR) == long_lived
    expect_invalid(token, rotated, NOW + HOUR + timedelta(microseconds=1))


def test_rotation_drops_keys_past_their_retire_after() -> None:
    first = RING.rotated(NOW, keep_for=HOUR)
    second = first.rotated(NOW + 2 * HOUR, keep_for=HOUR)
    assert second.get(RING.active_id) is None
    assert second.get(first.active_id) is not None
    assert len(second.keys) == 2


def test_pruned_drops_only_retired_keys() -> None:
    rotated = RING.rotated(NOW, keep_for=HOUR)
    assert rotated.pruned(NOW + HOUR) == rotated
    assert rotated.pruned(NOW + 2 * HOUR).keys == (rotated.active(),)


def test_unknown_key_id_is_an_invalid_token() -> None:
    expect_invalid(TOKEN, new_key_ring(NOW))


def test_tokens_of_two_rings_do_not_cross() -> None:
    other = new_key_ring(NOW)
    expect_invalid(seal(CLAIMS, other), RING)
    expect_invalid(TOKEN, other)


def test_a_key_with_the_same_id_but_another_secret_does_not_verify() -> None:
    impostor = replace(new_key(NOW), key_id=RING.active_id)
    expect_invalid(TOKEN, KeyRing(impostor.key_id, (impostor,)))


def test_swapping_the_key_id_for_another_ring_keys_id_is_an_invalid_token() -> None:
    rotated = RING.rotated(NOW, keep_for=DEFAULT_KEEP_FOR)
    blob = base64.urlsafe_b64decode(TOKEN[4:] + "==")
    swapped = "RC1." + tokens._encode(bytes.fromhex(rotated.active_id) + blob[4:])
    assert token_key_id(swapped) == rotated.active_id
    expect_invalid(swapped, rotated)


def test_key_ring_checks_its_keys() -> None:
    key = new_key(NOW)
    with pytest.raises(ValueError, match="not in the key ring"):
        KeyRing("00000000", (key,))
    with pytest.raises(ValueError, match="unique"):
        KeyRing(key.key_id, (key, key))
    with pytest.raises(ValueError, match="retire_after"):
        KeyRing(key.key_id, (replace(key, retire_after=NOW),))
    with pytest.raises(ValueError, match="32 bytes"):
        TokenKey("0123abcd", b"short", NOW)
    with pytest.raises(ValueError, match="hexadecimal"):
        TokenKey("KEY-1", bytes(32), NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        TokenKey("0123abcd", bytes(32), datetime(2024, 1, 1))


def test_new_keys_have_random_ids_and_secrets() -> None:
    keys = [new_key(NOW) for _ in range(20)]
    assert len({key.key_id for key in keys}) == 20
    assert len({key.secret for key in keys}) == 20
    assert all(re.fullmatch(r"[0-9a-f]{8}", key.key_id) for key in keys)
    assert all(len(key.secret) == 32 and key.created == NOW for key in keys)


# --- tampering -----------------------------------------------------------------------------------


def _replacement(character: str) -> str:
    return "A" if character != "A" else "B"


def test_changing_any_character_is_an_invalid_token() -> None:
    for position in range(len(TOKEN)):
        tampered = TOKEN[:position] + _replacement(TOKEN[position]) + TOKEN[position + 1 :]
        expect_invalid(tampered, RING)


def test_flipping_any_bit_of_the_sealed_bytes_is_an_invalid_token() -> None:
    blob = base64.urlsafe_b64decode(TOKEN[4:] + "==")
    for index in range(len(blob)):
        for bit in (0x01, 0x80):
            flipped = bytearray(blob)
            flipped[index] ^= bit
            expect_invalid("RC1." + tokens._encode(bytes(flipped)), RING)


def test_a_truncated_token_is_invalid() -> None:
    for length in range(len(TOKEN)):
        expect_invalid(TOKEN[:length], RING)


def test_an_extended_token_is_invalid() -> None:
    for suffix in ("A", "AA", "AAAA", "=", "==", "-", ".", " ", "\n", TOKEN[4:]):
        expect_invalid(TOKEN + suffix, RING)


def test_stray_bits_in_the_last_character_are_an_invalid_token() -> None:
    # Padding-free base64 leaves unused low bits in the last character; a token is one text only.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    by_remainder: dict[int, str] = {}
    for length in range(12):
        token = seal(assumed_role_claims(source_identity="x" * length), RING)
        by_remainder.setdefault(len(token[4:]) % 4, token)
    assert {2, 3} <= set(by_remainder)
    for remainder, unused_bits in ((2, 4), (3, 2)):
        token = by_remainder[remainder]
        index = alphabet.index(token[-1])
        high = index & ~((1 << unused_bits) - 1)
        for low in range(1, 1 << unused_bits):
            expect_invalid(token[:-1] + alphabet[high | low], RING)
        assert unseal(token, RING, NOW).source_identity is not None


@pytest.mark.parametrize("prefix", ["RC0.", "RC2.", "rc1.", "RC1-", "RC1", "RC10.", ".", ""])
def test_another_version_prefix_is_an_invalid_token(prefix: str) -> None:
    expect_invalid(prefix + TOKEN[4:], RING)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "RC1.",
        "RC1.A",
        "RC1.AAAA",
        "RC1." + "A" * 43,  # key id 00000000, zero nonce and tag, nothing sealed
        "RC1." + "A" * 10_000,
        "RC1.====",
        "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJGMEQCIF",  # an AWS token's opening
    ],
)
def test_malformed_tokens_are_invalid(text: str) -> None:
    expect_invalid(text, RING)


def test_standard_base64_characters_are_an_invalid_token() -> None:
    expect_invalid(TOKEN.replace("-", "+").replace("_", "/") + "+", RING)


def test_authenticated_text_that_is_not_claims_is_an_invalid_token() -> None:
    payloads = [
        b"",
        b"not deflate at all",
        tokens._compress(b"{}"),
        tokens._compress(b"[]"),
        tokens._compress(b"\xff\xfe"),
        tokens._compress(b'{"k":"ASIA"}'),
        tokens._compress(b"{" * 100),
        tokens._compress(b" " * (tokens.MAX_PLAINTEXT_BYTES + 1)),
        tokens._pack(CLAIMS) + b"\x00",
    ]
    record = json.loads(
        zlib.decompressobj(-15, tokens._DICTIONARY).decompress(tokens._pack(CLAIMS))
    )
    for key, value in [
        ("n", 1.5),
        ("x", True),
        ("x", "soon"),
        ("x", 10**30),
        ("c", 1),
        ("t", "robot"),
        ("k", None),
        ("e", ["a"]),
        ("e", {"a": 1}),
        ("zz", "unknown claims are refused"),
    ]:
        payloads.append(tokens._compress(json.dumps({**record, key: value}).encode()))
    for missing in ("k", "s", "x"):
        partial = {key: value for key, value in record.items() if key != missing}
        payloads.append(tokens._compress(json.dumps(partial).encode()))
    for payload in payloads:
        expect_invalid(tokens._encrypt(payload, RING.active()), RING)


def test_invalid_token_error_chains_nothing() -> None:
    payload = tokens._compress(b'{"s":"a secret that must not leak"')
    with pytest.raises(InvalidClientTokenId) as raised:
        unseal(tokens._encrypt(payload, RING.active()), RING, NOW)
    assert raised.value.__context__ is None
    assert raised.value.__cause__ is None


# --- expiry --------------------------------------------------------------------------------------


def test_token_is_valid_until_just_before_it_expires() -> None:
    assert unseal(TOKEN, RING, CLAIMS.expires - timedelta(microseconds=1)) == CLAIMS


@pytest.mark.parametrize("after", [timedelta(0), timedelta(seconds=1), timedelta(days=400)])
def test_token_is_expired_from_its_expiry_on(after: timedelta) -> None:
    with pytest.raises(ExpiredToken) as raised:
        unseal(TOKEN, RING, CLAIMS.expires + after)
    assert raised.value.message == EXPIRED_MESSAGE


def test_unseal_wants_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        unseal(TOKEN, RING, datetime(2024, 5, 1))


# --- credential ids ------------------------------------------------------------------------------


def test_credential_ids_look_like_aws_temporary_keys() -> None:
    pairs = [new_credentials_ids() for _ in range(50)]
    for access_key_id, secret in pairs:
        assert re.fullmatch(r"ASIA[A-Z2-7]{16}", access_key_id)
        assert re.fullmatch(r"[A-Za-z0-9+/]{40}", secret)
    assert len({access_key_id for access_key_id, _ in pairs}) == 50
    assert len({secret for _, secret in pairs}) == 50


# --- no secret in any repr ------------------------------------------------------------------------


def test_reprs_show_no_secret_material() -> None:
    rotated = RING.rotated(NOW, keep_for=HOUR)
    shown = repr(rotated) + repr(rotated.active()) + str(rotated) + repr(CLAIMS) + str(CLAIMS)
    for key in rotated.keys:
        for form in (
            repr(key.secret),
            key.secret.hex(),
            base64.b64encode(key.secret).decode(),
            base64.urlsafe_b64encode(key.secret).decode(),
        ):
            assert form not in shown
    assert CLAIMS.secret_access_key not in shown
    assert rotated.active_id in shown  # the id is shown: it is how operators tell keys apart
    assert CLAIMS.access_key_id in shown


# --- properties ----------------------------------------------------------------------------------

_any_text = st.text(alphabet=st.characters(exclude_categories=()))


@settings(max_examples=300)
@given(st.one_of(_any_text, st.from_regex(r"RC1\.[A-Za-z0-9_-]{0,400}", fullmatch=True)))
def test_unseal_of_any_text_raises_only_the_two_token_errors(text: str) -> None:
    try:
        unseal(text, RING, NOW)
    except (InvalidClientTokenId, ExpiredToken):
        pass


@settings(max_examples=300)
@given(st.data())
def test_unseal_of_a_mutated_token_raises_only_invalid_token(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(TOKEN)))
    cut = data.draw(st.integers(0, 8))
    inserted = data.draw(st.text(max_size=8))
    mutated = TOKEN[:position] + inserted + TOKEN[position + cut :]
    if mutated == TOKEN:
        return
    expect_invalid(mutated, RING)


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_unseal_of_any_authenticated_bytes_raises_only_invalid_token(payload: bytes) -> None:
    expect_invalid(tokens._encrypt(payload, RING.active()), RING)


_moments = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(9998, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=9))]),
)


@st.composite
def _claims(draw: st.DrawFn) -> SessionClaims:
    optional = st.none() | _any_text
    return SessionClaims(
        access_key_id=draw(_any_text),
        secret_access_key=draw(_any_text),
        account_id=draw(_any_text),
        principal_type=draw(st.sampled_from(sorted(tokens.PRINCIPAL_TYPES))),
        principal_arn=draw(_any_text),
        user_id=draw(_any_text),
        issuer_arn=draw(_any_text),
        role_id=draw(optional),
        session_policy=draw(optional),
        source_identity=draw(optional),
        chained=draw(st.booleans()),
        issued=draw(_moments),
        expires=draw(_moments),
        extra=draw(st.dictionaries(_any_text, _any_text, max_size=4)),
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_claims())
def test_any_claims_survive_the_round_trip(claims: SessionClaims) -> None:
    just_before = claims.expires - timedelta(microseconds=1)
    assert unseal(seal(claims, RING), RING, just_before) == claims
