"""IMDSv2 session tokens: minting, checking, instance binding, expiry, malformed input."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.imds.tokens import MAX_TTL_SECONDS, VERIFIED_MEMO, TokenMinter, new_key

KEY = bytes(range(32))
NOW = 1_795_000_000.0
INSTANCE = "i-0123456789abcdef0"
OTHER_INSTANCE = "i-0fedcba9876543210"
MINTER = TokenMinter(KEY)


def test_a_minted_token_checks_for_its_instance() -> None:
    token = MINTER.mint(INSTANCE, 60, NOW)
    assert MINTER.check(token, INSTANCE, NOW)


def test_a_token_is_url_safe_base64_without_whitespace_or_padding() -> None:
    token = MINTER.mint(INSTANCE, MAX_TTL_SECONDS, NOW)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert len(token) == 55


def test_a_token_is_reusable_until_its_ttl_runs_out() -> None:
    token = MINTER.mint(INSTANCE, 60, NOW)
    assert all(MINTER.check(token, INSTANCE, NOW + offset) for offset in (0, 1, 30, 59, 59.999))


def test_a_token_fails_once_its_ttl_has_passed() -> None:
    token = MINTER.mint(INSTANCE, 60, NOW)
    assert not MINTER.check(token, INSTANCE, NOW + 60)
    assert not MINTER.check(token, INSTANCE, NOW + 3600)


def test_the_longest_ttl_lasts_six_hours() -> None:
    token = MINTER.mint(INSTANCE, MAX_TTL_SECONDS, NOW)
    assert MINTER.check(token, INSTANCE, NOW + MAX_TTL_SECONDS - 1)
    assert not MINTER.check(token, INSTANCE, NOW + MAX_TTL_SECONDS)


def test_a_token_from_another_instance_fails() -> None:
    token = MINTER.mint(OTHER_INSTANCE, 60, NOW)
    assert not MINTER.check(token, INSTANCE, NOW)


def test_a_token_minted_under_another_key_fails() -> None:
    token = TokenMinter(bytes(32)).mint(INSTANCE, 60, NOW)
    assert not MINTER.check(token, INSTANCE, NOW)


def test_two_fresh_keys_differ_and_are_32_bytes() -> None:
    first, second = new_key(), new_key()
    assert len(first) == 32 and first != second


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL_SECONDS + 1])
def test_minting_refuses_a_ttl_outside_the_aws_range(ttl: int) -> None:
    with pytest.raises(ValueError, match="TTL"):
        MINTER.mint(INSTANCE, ttl, NOW)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        TokenMinter(b"short")


def test_repr_does_not_show_the_key() -> None:
    assert KEY.hex() not in repr(MINTER) and str(KEY) not in repr(MINTER)


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=")


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_changing_any_byte_of_a_token_makes_it_fail() -> None:
    raw = _raw(MINTER.mint(INSTANCE, 60, NOW))
    for index in range(len(raw)):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        assert not MINTER.check(_text(bytes(tampered)), INSTANCE, NOW), index


def test_a_token_with_a_later_expiry_but_the_old_mac_fails() -> None:
    raw = _raw(MINTER.mint(INSTANCE, 60, NOW))
    extended = raw[:1] + (int.from_bytes(raw[1:9], "big") + 10**9).to_bytes(8, "big") + raw[9:]
    assert not MINTER.check(_text(extended), INSTANCE, NOW + 120)


def test_a_token_of_another_version_fails() -> None:
    raw = _raw(MINTER.mint(INSTANCE, 60, NOW))
    assert not MINTER.check(_text(b"\x02" + raw[1:]), INSTANCE, NOW)


def test_a_non_canonical_spelling_of_a_valid_token_fails() -> None:
    token = MINTER.mint(INSTANCE, 60, NOW)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 41 bytes leave 2 unused bits in the last character: set them.
    stray = alphabet[alphabet.index(token[-1]) | 0b11]
    assert stray != token[-1]
    assert not MINTER.check(token[:-1] + stray, INSTANCE, NOW)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda token: "", id="empty"),
        pytest.param(lambda token: token[:-1], id="truncated"),
        pytest.param(lambda token: token + "A", id="too-long"),
        pytest.param(lambda token: token + "=", id="padded"),
        pytest.param(lambda token: " " + token, id="leading-space"),
        pytest.param(lambda token: token + "\n", id="trailing-newline"),
        pytest.param(lambda token: token.replace("-", "+").replace("_", "/"), id="plain-base64"),
        pytest.param(lambda token: token[:10] + "é" + token[11:], id="non-ascii"),
        pytest.param(lambda token: token[:10] + "\udcff" + token[11:], id="lone-surrogate"),
    ],
)
def test_a_malformed_token_fails(mangle: Callable[[str], str]) -> None:
    token = MINTER.mint(INSTANCE, 60, NOW)
    mangled = mangle(token)
    if mangled == token:  # plain-base64 changes nothing when the token has no - or _
        mangled = token[:-2] + "+/"
    assert not MINTER.check(mangled, INSTANCE, NOW)


def test_check_of_a_non_string_is_false_not_an_error() -> None:
    assert not MINTER.check(b"bytes", INSTANCE, NOW)  # type: ignore[arg-type]
    assert not MINTER.check(None, INSTANCE, NOW)  # type: ignore[arg-type]


def test_an_instance_id_with_a_lone_surrogate_still_mints_and_checks() -> None:
    token = MINTER.mint("i-\udcff", 60, NOW)
    assert MINTER.check(token, "i-\udcff", NOW)
    assert not MINTER.check(token, INSTANCE, NOW)


@given(token=st.text(), instance_id=st.text(), now=st.floats(allow_nan=True))
def test_check_never_raises_on_arbitrary_text(token: str, instance_id: str, now: float) -> None:
    assert MINTER.check(token, instance_id, now) in (True, False)


@given(token=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
def test_check_refuses_arbitrary_base64url_text(token: str) -> None:
    assert not MINTER.check(token, INSTANCE, NOW)


@given(
    instance_id=st.text(min_size=1),
    ttl=st.integers(min_value=1, max_value=MAX_TTL_SECONDS),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_every_minted_token_checks_within_its_ttl_and_not_after(
    instance_id: str, ttl: int, now: float
) -> None:
    token = MINTER.mint(instance_id, ttl, now)
    assert MINTER.check(token, instance_id, now)
    assert not MINTER.check(token, instance_id, now + ttl + 0.001)


# -- the memo of authentic tokens --------------------------------------------------------------


def test_a_remembered_token_still_fails_for_another_instance_and_after_its_ttl() -> None:
    minter = TokenMinter(KEY)
    token = minter.mint(INSTANCE, 60, NOW)
    assert minter.check(token, INSTANCE, NOW)  # now remembered
    assert not minter.check(token, OTHER_INSTANCE, NOW)
    assert not minter.check(token, INSTANCE, NOW + 60)
    assert minter.check(token, INSTANCE, NOW + 59)


def test_only_authentic_tokens_are_remembered_and_the_memo_is_bounded() -> None:
    minter = TokenMinter(KEY)
    forged = TokenMinter(bytes(32)).mint(INSTANCE, 60, NOW)
    assert not minter.check(forged, INSTANCE, NOW)
    assert minter._verified == {}
    for second in range(VERIFIED_MEMO + 10):
        assert minter.check(minter.mint(INSTANCE, 60, NOW + second), INSTANCE, NOW)
        assert len(minter._verified) <= VERIFIED_MEMO
    assert not minter.check(forged, INSTANCE, NOW)


def test_a_token_remembered_by_one_boot_is_unknown_to_the_next() -> None:
    token = MINTER.mint(INSTANCE, 60, NOW)
    assert MINTER.check(token, INSTANCE, NOW)
    assert not TokenMinter(new_key()).check(token, INSTANCE, NOW)
