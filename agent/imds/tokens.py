"""IMDSv2 session tokens: stateless, bound to one instance, checked with an HMAC.

The agent keeps no table of issued tokens. A token carries its own expiry and a MAC over it and
the instance id, under a random key made once per agent boot (so tokens die with the agent, as
they do when an EC2 instance's IMDS restarts). Nothing here reads a clock: ``now`` comes in.

Token format, version 1, as the text sent to the guest::

    base64url, no padding, of: version (1 byte, 0x01) | expiry (8 bytes) | MAC (32 bytes)

- ``expiry`` is integer milliseconds since the Unix epoch, big-endian unsigned.
- ``MAC`` is HMAC-SHA256 under the boot key of ``version | instance id (UTF-8) | expiry``. The
  instance id is not in the token: a token shown in another instance's namespace fails its MAC.
  Version and expiry have fixed sizes, so the concatenation is unambiguous.
- The text is always 55 characters of ``[A-Za-z0-9_-]``; a text whose last character carries stray
  bits is refused, so no two texts are the same token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import struct
from typing import Final

MIN_TTL_SECONDS: Final = 1
MAX_TTL_SECONDS: Final = 21600
"""The TTL range AWS accepts in ``X-aws-ec2-metadata-token-ttl-seconds``."""

KEY_BYTES: Final = 32
"""Size of a key made by :func:`new_key`; :class:`TokenMinter` accepts 16 bytes or more."""

VERIFIED_MEMO: Final = 4096
"""How many authentic tokens a minter remembers, so that a guest reusing its token (as every SDK
does, for up to six hours) is not decoded and MACed again on every request."""

_VERSION: Final = b"\x01"
_EXPIRY: Final = struct.Struct(">Q")
_MAC_BYTES: Final = 32
_RAW_BYTES: Final = len(_VERSION) + _EXPIRY.size + _MAC_BYTES
_TEXT_LENGTH: Final = math.ceil(_RAW_BYTES * 4 / 3)
_TEXT: Final = re.compile(rf"[A-Za-z0-9_-]{{{_TEXT_LENGTH}}}", re.ASCII)


def new_key() -> bytes:
    """A fresh random key for one agent boot (the caller makes it once and injects it)."""
    return secrets.token_bytes(KEY_BYTES)


class TokenMinter:
    """Mints and checks the IMDSv2 session tokens of every instance on one node."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("an IMDS token key needs at least 16 bytes")
        self._key = bytes(key)
        self._hmac = hmac.new(self._key, digestmod=hashlib.sha256)
        #: Tokens already proven authentic: text → (instance id, expiry in ms). Every check
        #: still compares the instance and the expiry; only the decoding and the MAC are
        #: skipped. Emptied when full; an invalid token is never remembered.
        self._verified: dict[str, tuple[str, int]] = {}

    def __repr__(self) -> str:
        return "TokenMinter(<key hidden>)"

    def mint(self, instance_id: str, ttl_seconds: int, now: float) -> str:
        """A token for ``instance_id`` valid for ``ttl_seconds`` from ``now``."""
        if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(
                f"token TTL must be {MIN_TTL_SECONDS}..{MAX_TTL_SECONDS} seconds, not {ttl_seconds}"
            )
        expiry = _EXPIRY.pack(math.floor((now + ttl_seconds) * 1000))
        raw = _VERSION + expiry + self._mac(instance_id, expiry)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def check(self, token: str, instance_id: str, now: float) -> bool:
        """Whether ``token`` was minted here for ``instance_id`` and is unexpired at ``now``.

        Never raises: anything that is not a well-formed, authentic, live token is ``False``.
        """
        try:
            return self._check(token, instance_id, now)
        except Exception:  # a guest's bytes must never take the agent down
            return False

    def _check(self, token: str, instance_id: str, now: float) -> bool:
        known = self._verified.get(token)
        if known is not None and known[0] == instance_id:
            return bool(now * 1000 < known[1])
        if not isinstance(token, str) or _TEXT.fullmatch(token) is None:
            return False
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return False
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return False  # stray bits in the last character: not the canonical text
        if len(raw) != _RAW_BYTES or raw[:1] != _VERSION:
            return False
        expiry = raw[1 : 1 + _EXPIRY.size]
        mac = raw[1 + _EXPIRY.size :]
        if not hmac.compare_digest(mac, self._mac(instance_id, expiry)):
            return False
        (expires_ms,) = _EXPIRY.unpack(expiry)
        if len(self._verified) >= VERIFIED_MEMO:
            self._verified.clear()
        self._verified[token] = (instance_id, expires_ms)
        return bool(now * 1000 < expires_ms)

    def _mac(self, instance_id: str, expiry: bytes) -> bytes:
        mac = self._hmac.copy()  # the key's pads are hashed once, at construction
        mac.update(_VERSION + instance_id.encode("utf-8", "surrogatepass") + expiry)
        return mac.digest()
