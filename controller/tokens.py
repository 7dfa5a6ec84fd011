"""Stateless session tokens: temporary credentials sealed with AES-256-GCM under a key ring.

Issuing temporary credentials writes nothing anywhere: the SessionToken itself carries the claims
needed to check a request signed with them (access key id, secret, principal, session policy,
expiry), sealed under one key of the controller's :class:`KeyRing`. Any replica holding the ring
verifies any token. Nothing here reads a clock or a file: ``now`` and the ring come in.

Token format, version 1::

    RC1.<base64url, no padding, of: key id (4 bytes) | nonce (12 bytes) | ciphertext | tag (16)>

- ``RC1.`` names the format; any other prefix is refused. A new format gets a new prefix.
- The key id is the ring key's 8 hex digits as 4 raw bytes, so a replica finds the key without
  trying them all and keys can rotate.
- The nonce is random (``os.urandom``) for every token. AES-GCM with random 96-bit nonces is good
  for about 2**32 tokens per key; rotating the key (``rolecall-controller rotate-token-key``) far
  more often than that is the operator's part.
- Associated data: the ASCII prefix ``RC1.`` followed by the 4 key-id bytes, so neither can be
  changed or swapped without the tag failing.
- The plaintext is raw DEFLATE (RFC 1951, no zlib header: the GCM tag already guards integrity)
  with the preset dictionary :data:`_DICTIONARY`, of compact UTF-8 JSON (lone surrogates kept
  with ``surrogatepass``): an object with the one-letter keys of :data:`_FIELDS`. Absent optional
  claims are left out; times are integer microseconds since the Unix epoch, UTC. Unknown keys are
  refused (fail closed): a field that old replicas may ignore goes in ``extra``, and a field that
  changes what a token allows needs a new version. The dictionary is part of the format: changing
  it means a new version.
- Any raw DEFLATE stream is read. RoleCall writes claims without a session policy as one stored
  (uncompressed) block, and compresses the others. Setting up zlib's compressor for every token
  cost more than all the rest of sealing, to save about 150 bytes of a few hundred; a session
  policy can be kilobytes, so it is still compressed. Readers that only know compressed tokens
  open stored ones alike: it is the same format.
- Base64url without padding is canonical here: a token whose last character carries stray bits is
  refused, so no two texts decode to the same token.

Typical sizes (measured by the tests): an assumed-role token is about 520 characters, about 480
with a 500-character session policy (compressed, with the dictionary). :func:`packed_size_percent`
bounds the session policy (the largest claim) so tokens stay under 2 KiB.

Whoever verifies a request must still check that the request's access key id is the token's
:attr:`SessionClaims.access_key_id` and its signature is made with the token's secret: the token
only says what those credentials are.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import re
import secrets
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.errors import ExpiredToken, InvalidClientTokenId

VERSION: Final = "RC1"
PREFIX: Final = VERSION + "."
KEY_ID_BYTES: Final = 4
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
KEY_BYTES: Final = 32
#: Longest token :func:`unseal` looks at and :func:`seal` produces (characters).
MAX_TOKEN_LENGTH: Final = 8192
#: Longest plaintext :func:`unseal` inflates, so no input can make it allocate much.
MAX_PLAINTEXT_BYTES: Final = 64 * 1024
#: What :func:`packed_size_percent` measures against: bytes of compressed session policy. A
#: policy that fills it leaves an assumed-role token at about 1.6 KiB, under the 2 KiB that SDKs
#: and HTTP headers handle without trouble; 1,900 characters of ordinary statements use about half.
PACKED_POLICY_ALLOWANCE: Final = 1024

#: The longest session RoleCall issues: GetFederationToken's maximum DurationSeconds.
LONGEST_SESSION: Final = timedelta(seconds=129_600)
#: Clock difference between replicas that key retirement allows for.
CLOCK_SKEW: Final = timedelta(minutes=5)
#: How long a rotated-out key keeps verifying: every token it sealed has expired by then.
DEFAULT_KEEP_FOR: Final = LONGEST_SESSION + CLOCK_SKEW

INVALID_MESSAGE: Final = "The security token included in the request is invalid."
EXPIRED_MESSAGE: Final = "The security token included in the request is expired"

#: ``session`` is GetSessionToken's; ``instance`` is reserved for EC2 instance role credentials.
PRINCIPAL_TYPES: Final = frozenset({"assumed-role", "federated-user", "session", "instance"})

_KEY_ID = re.compile(r"[0-9a-f]{8}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Serialized key -> claim. Required keys first; the rest are left out when empty.
_FIELDS: Final = {
    "k": "access_key_id",
    "s": "secret_access_key",
    "a": "account_id",
    "t": "principal_type",
    "p": "principal_arn",
    "u": "user_id",
    "i": "issuer_arn",
    "n": "issued",
    "x": "expires",
    "r": "role_id",
    "P": "session_policy",
    "S": "source_identity",
    "c": "chained",
    "e": "extra",
}
_REQUIRED: Final = frozenset({"k", "s", "a", "t", "p", "u", "i", "n", "x"})
_KNOWN: Final = frozenset(_FIELDS)


def _dictionary() -> bytes:
    """The DEFLATE preset dictionary: text that tokens repeat, most frequent last.

    Part of format RC1: never change it without a new version prefix.
    """
    policy = (
        '{"Version":"2012-10-17","Statement":[{"Sid":"","Effect":"Deny","NotAction":"",'
        '"NotResource":"","Condition":{"StringLike":{"aws:userid":""},"IpAddress":'
        '{"aws:SourceIp":"10.0.0.0/8"},"Bool":{"aws:SecureTransport":"true"},"StringEquals":'
        '{"aws:PrincipalTag/":"","aws:RequestedRegion":"us-east-1"}}},{"Effect":"Allow",'
        '"Action":["sts:GetCallerIdentity","sts:AssumeRole","iam:PassRole","iam:Get*",'
        '"iam:List*","ec2:Describe*","logs:CreateLogStream","logs:PutLogEvents",'
        '"dynamodb:GetItem","dynamodb:PutItem","sqs:SendMessage","sns:Publish","kms:Decrypt",'
        '"s3:ListBucket","s3:GetObject","s3:PutObject","s3:*"],"Resource":['
        '"arn:aws:iam::","arn:aws:ec2:","arn:aws:s3:::","*"]}]}'
    )
    claims = (
        '{"k":"ASIA","s":"","a":"","t":"session","p":"arn:aws:sts::","u":"","i":"arn:aws:iam::'
        ':root","n":17,"x":17,"c":true,"e":{"instance_id":"i-","node":""}}'
        '{"k":"ASIA","s":"","a":"","t":"federated-user","p":"arn:aws:sts:::federated-user/",'
        '"i":"arn:aws:iam:::user/","n":17,"x":17,"P":"'
        + policy.replace('"', '\\"')
        + '"}{"k":"ASIA","s":"","a":"","t":"instance","p":"arn:aws:sts:::assumed-role/",'
        '"u":"AROA","i":"arn:aws:iam:::role/","n":17,"x":17,"r":"AROA","S":"'
        '"}{"k":"ASIA","s":"","a":"","t":"assumed-role","p":"arn:aws:sts:::assumed-role/",'
        '"u":"AROA","i":"arn:aws:iam:::user/","n":17,"x":17,"r":"AROA"}'
    )
    return (policy + claims).encode("ascii")


_DICTIONARY: Final = _dictionary()
#: A stored DEFLATE block's header: BFINAL/BTYPE byte, LEN and NLEN (RFC 1951, 3.2.4).
_STORED_HEAD: Final = struct.Struct("<BHH")
_STORED_MAX: Final = 0xFFFF
#: Compact JSON, as json.dumps(ensure_ascii=False, separators=(",", ":")) without a new encoder
#: for every token.
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _empty_extra() -> Mapping[str, str]:
    return MappingProxyType({})


def _require_aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


@dataclass(frozen=True)
class SessionClaims:
    """What a session token carries: everything needed to check a request signed with it."""

    access_key_id: str  # "ASIA" + 16 of [A-Z2-7]
    secret_access_key: str = field(repr=False)  # 40 characters; never shown
    account_id: str
    principal_type: str  # one of PRINCIPAL_TYPES
    principal_arn: str  # arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION, …federated-user/NAME
    user_id: str  # AROA…:SESSION, ACCOUNT:NAME
    issuer_arn: str  # the long-term identity that started the chain (user or root ARN)
    role_id: str | None  # assumed roles: permissions are the role's policies at request time
    session_policy: str | None  # the Policy parameter, verbatim
    source_identity: str | None
    chained: bool  # issued to a caller that itself used temporary credentials
    issued: datetime  # aware
    expires: datetime  # aware
    extra: Mapping[str, str] = field(default_factory=_empty_extra)  # instance id, node, …

    def __post_init__(self) -> None:
        if self.principal_type not in PRINCIPAL_TYPES:
            raise ValueError(f"principal_type must be one of {sorted(PRINCIPAL_TYPES)}")
        _require_aware(self.issued, "issued")
        _require_aware(self.expires, "expires")
        extra = dict(self.extra)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise ValueError("extra must map strings to strings")
        # A read-only copy, so a sealed claim set cannot change under its holder.
        object.__setattr__(self, "extra", MappingProxyType(extra))


@dataclass(frozen=True)
class TokenKey:
    """One AES-256-GCM key of the ring. Its secret never appears in a repr or a message."""

    key_id: str  # 8 lowercase hex digits
    secret: bytes = field(repr=False)  # 32 bytes
    created: datetime
    retire_after: datetime | None = None  # verifies tokens until then; None: no end set

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not _KEY_ID.fullmatch(self.key_id):
            raise ValueError("a token key id must be 8 lowercase hexadecimal digits")
        if not isinstance(self.secret, bytes) or len(self.secret) != KEY_BYTES:
            raise ValueError(f"token key {self.key_id}: the secret must be {KEY_BYTES} bytes")
        _require_aware(self.created, f"token key {self.key_id}: created")
        if self.retire_after is not None:
            _require_aware(self.retire_after, f"token key {self.key_id}: retire_after")

    def is_retired(self, now: datetime) -> bool:
        """Whether the key may no longer verify tokens (``now`` is past its retire_after)."""
        return self.retire_after is not None and self.retire_after < now


@dataclass(frozen=True)
class KeyRing:
    """The token keys: one active key seals, every key not yet retired verifies."""

    active_id: str
    keys: tuple[TokenKey, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        ids = [key.key_id for key in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("token key ids must be unique in a key ring")
        active = self.get(self.active_id)
        if active is None:
            raise ValueError(f"the active token key {self.active_id} is not in the key ring")
        if active.retire_after is not None:
            raise ValueError(f"the active token key {self.active_id} must not have retire_after")

    def active(self) -> TokenKey:
        """The key that seals new tokens."""
        key = self.get(self.active_id)
        assert key is not None  # checked in __post_init__
        return key

    def get(self, key_id: str) -> TokenKey | None:
        """The key with this id, or None."""
        for key in self.keys:
            if key.key_id == key_id:
                return key
        return None

    def rotated(self, now: datetime, keep_for: timedelta = DEFAULT_KEEP_FOR) -> KeyRing:
        """A ring with a new active key; the old one verifies for ``keep_for`` more, then goes."""
        _require_aware(now, "now")
        if keep_for < timedelta(0):
            raise ValueError("keep_for must not be negative")
        new = new_key(now)
        while self.get(new.key_id) is not None:
            new = new_key(now)
        kept = tuple(
            replace(key, retire_after=now + keep_for) if key.key_id == self.active_id else key
            for key in self.keys
        )
        return KeyRing(new.key_id, (new, *kept)).pruned(now)

    def revoked(self, now: datetime) -> KeyRing:
        """A ring of one new key and nothing else: every token sealed before stops verifying
        (an emergency, when a key may have leaked)."""
        _require_aware(now, "now")
        new = new_key(now)
        while self.get(new.key_id) is not None:
            new = new_key(now)
        return KeyRing(new.key_id, (new,))

    def pruned(self, now: datetime) -> KeyRing:
        """This ring without the keys retired by ``now``."""
        return KeyRing(self.active_id, tuple(key for key in self.keys if not key.is_retired(now)))


def new_key(now: datetime) -> TokenKey:
    """A fresh random key with a random id."""
    return TokenKey(secrets.token_hex(KEY_ID_BYTES), secrets.token_bytes(KEY_BYTES), now)


def new_key_ring(now: datetime) -> KeyRing:
    """A ring of one fresh key."""
    key = new_key(now)
    return KeyRing(key.key_id, (key,))


_BASE32_OF_BYTE: Final = bytes(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[byte % 32] for byte in range(256)
)


def new_credentials_ids() -> tuple[str, str]:
    """A temporary access key id (``ASIA`` + 16 of [A-Z2-7]) and its 40-character secret."""
    # 16 random bytes, each taken modulo 32 (256 is a multiple of 32, so uniformly) to one of
    # [A-Z2-7]: 80 random bits, as base32 of 10 bytes, without base32's slow pure-Python loop.
    # Base64 of 240 bits is 40 characters of [A-Za-z0-9+/]. This runs for every issued session:
    # one urandom call for both.
    drawn = os.urandom(46)
    access_key_id = "ASIA" + drawn[:16].translate(_BASE32_OF_BYTE).decode("ascii")
    secret = base64.b64encode(drawn[16:]).decode("ascii")
    return access_key_id, secret


def seal(claims: SessionClaims, ring: KeyRing) -> str:
    """The SessionToken carrying ``claims``, sealed with the ring's active key."""
    token = _encrypt(_pack(claims), ring.active())
    if len(token) > MAX_TOKEN_LENGTH:
        # The STS layer keeps claims far smaller (packed_size_percent); refuse rather than
        # issue a token that unseal would refuse.
        raise ValueError(f"claims too large for a session token ({len(token)} characters)")
    return token


def unseal(token: str, ring: KeyRing, now: datetime) -> SessionClaims:
    """The claims of a token sealed by a key of ``ring`` that is not retired.

    Raises InvalidClientTokenId for anything that is not such a token, and ExpiredToken for
    one whose claims expire at or before ``now``. Nothing else, whatever ``token`` is.
    """
    _require_aware(now, "now")
    claims = _open(token, ring, now)
    if claims is None:
        raise InvalidClientTokenId(INVALID_MESSAGE)
    if now >= claims.expires:
        raise ExpiredToken(EXPIRED_MESSAGE)
    return claims


def token_key_id(token: str) -> str | None:
    """The key id a well-formed token names, without checking it; None when malformed.

    For the controller to tell an unknown key (re-read the key ring, try again) from a bad token.
    """
    parts = _split(token)
    return parts[0].hex() if parts is not None else None


def packed_size_percent(claims: SessionClaims) -> int:
    """How full the session policy is, as STS's PackedPolicySize: a percentage, above 100 too big.

    The policy is compressed as in a token and measured against PACKED_POLICY_ALLOWANCE bytes,
    rounding up, so a policy that fits never shows more than 100.
    """
    if claims.session_policy is None:
        return 0
    size = len(_compress(claims.session_policy.encode("utf-8", "surrogatepass")))
    return -(-size * 100 // PACKED_POLICY_ALLOWANCE)


# --- the format ---------------------------------------------------------------------------------


def _associated_data(key_id: bytes) -> bytes:
    return PREFIX.encode("ascii") + key_id


def _encode(blob: bytes) -> str:
    return base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")


def _encrypt(plaintext: bytes, key: TokenKey) -> str:
    key_id = bytes.fromhex(key.key_id)
    nonce = os.urandom(NONCE_BYTES)
    sealed = _cipher(key.secret).encrypt(nonce, plaintext, _associated_data(key_id))
    return PREFIX + _encode(key_id + nonce + sealed)


def _split(token: object) -> tuple[bytes, bytes, bytes] | None:
    """(key id, nonce, ciphertext and tag) of a well-formed token, else None."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    if not token.startswith(PREFIX):
        return None
    body = token[len(PREFIX) :]
    if not _BASE64URL.fullmatch(body):
        return None
    try:
        blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    if _encode(blob) != body:  # stray bits in the last character: not the text we wrote
        return None
    if len(blob) < KEY_ID_BYTES + NONCE_BYTES + TAG_BYTES:
        return None
    key_id, rest = blob[:KEY_ID_BYTES], blob[KEY_ID_BYTES:]
    return key_id, rest[:NONCE_BYTES], rest[NONCE_BYTES:]


def _open(token: object, ring: KeyRing, now: datetime) -> SessionClaims | None:
    """The claims of a token sealed by a live key of the ring, else None."""
    parts = _split(token)
    if parts is None:
        return None
    key_id, nonce, sealed = parts
    key = ring.get(key_id.hex())
    if key is None or key.is_retired(now):
        return None
    # Failures become None here and the ApiError is raised by the caller outside any except
    # block, so no exception carrying the plaintext (a JSONDecodeError's .doc holds the
    # secret) is ever chained to what callers see or log.
    try:
        plaintext = _cipher(key.secret).decrypt(nonce, sealed, _associated_data(key_id))
    except InvalidTag:
        return None
    try:
        return _unpack(plaintext)
    except Exception:
        # Authenticated, so written by a RoleCall controller, yet not RC1 claims: refuse.
        return None


@functools.lru_cache(maxsize=64)
def _cipher(secret: bytes) -> AESGCM:
    """The AES-GCM cipher of a key, made once: every request with a token opens one."""
    return AESGCM(secret)


#: The compressor with the dictionary loaded, copied for each token. A 2 KiB window (the
#: dictionary fits; a session policy is at most 2,048 characters) and zlib's default memory level
#: make a copy about seven times cheaper than a new compressor with the largest window and memory
#: level, for the same sizes; the reader's 32 KiB window inflates it alike.
_COMPRESSOR: Final = zlib.compressobj(
    9, zlib.DEFLATED, -11, 8, zlib.Z_DEFAULT_STRATEGY, _DICTIONARY
)


def _compress(data: bytes) -> bytes:
    compressor = _COMPRESSOR.copy()
    return compressor.compress(data) + compressor.flush()


def _stored(data: bytes) -> bytes:
    """``data`` as raw DEFLATE in one final stored block (RFC 1951, 3.2.4): BFINAL 1 and BTYPE
    00, the length and its ones' complement, little-endian, then the bytes as they are."""
    return _STORED_HEAD.pack(1, len(data), len(data) ^ 0xFFFF) + data


def _decompress(data: bytes) -> bytes:
    if data[:1] == b"\x01" and len(data) >= _STORED_HEAD.size:
        _final, length, complement = _STORED_HEAD.unpack_from(data)
        if length ^ complement == 0xFFFF and len(data) == _STORED_HEAD.size + length:
            return data[_STORED_HEAD.size :]  # one stored block, as _stored writes: no inflating
    decompressor = zlib.decompressobj(-15, _DICTIONARY)
    plaintext = decompressor.decompress(data, MAX_PLAINTEXT_BYTES)
    if decompressor.unconsumed_tail or decompressor.unused_data or not decompressor.eof:
        raise ValueError("not one complete DEFLATE stream within the size limit")
    return plaintext


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _pack(claims: SessionClaims) -> bytes:
    record: dict[str, object] = {
        "k": claims.access_key_id,
        "s": claims.secret_access_key,
        "a": claims.account_id,
        "t": claims.principal_type,
        "p": claims.principal_arn,
        "u": claims.user_id,
        "i": claims.issuer_arn,
        "n": _micros(claims.issued),
        "x": _micros(claims.expires),
    }
    if claims.role_id is not None:
        record["r"] = claims.role_id
    if claims.session_policy is not None:
        record["P"] = claims.session_policy
    if claims.source_identity is not None:
        record["S"] = claims.source_identity
    if claims.chained:
        record["c"] = True
    if claims.extra:
        record["e"] = dict(claims.extra)
    data = _JSON.encode(record).encode("utf-8", "surrogatepass")
    if claims.session_policy is None and len(data) <= _STORED_MAX:
        return _stored(data)
    return _compress(data)


def _text(record: dict[str, object], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise TypeError(f"{_FIELDS[key]} must be a string")
    return value


def _optional_text(record: dict[str, object], key: str) -> str | None:
    return _text(record, key) if key in record else None


def _moment(record: dict[str, object], key: str) -> datetime:
    value = record[key]
    if type(value) is not int:  # not bool, not float
        raise TypeError(f"{_FIELDS[key]} must be an integer")
    return _EPOCH + value * _MICROSECOND


def _unpack(plaintext: bytes) -> SessionClaims:
    record = json.loads(_decompress(plaintext).decode("utf-8", "surrogatepass"))
    if not isinstance(record, dict):
        raise TypeError("claims must be an object")
    keys = set(record)
    if not _REQUIRED <= keys or not keys <= _KNOWN:
        raise ValueError("missing or unknown claims")
    chained = record.get("c", False)
    if type(chained) is not bool:
        raise TypeError("chained must be a boolean")
    extra = record.get("e", {})
    if not isinstance(extra, dict):
        raise TypeError("extra must be an object")
    return SessionClaims(
        access_key_id=_text(record, "k"),
        secret_access_key=_text(record, "s"),
        account_id=_text(record, "a"),
        principal_type=_text(record, "t"),
        principal_arn=_text(record, "p"),
        user_id=_text(record, "u"),
        issuer_arn=_text(record, "i"),
        role_id=_optional_text(record, "r"),
        session_policy=_optional_text(record, "P"),
        source_identity=_optional_text(record, "S"),
        chained=chained,
        issued=_moment(record, "n"),
        expires=_moment(record, "x"),
        extra=extra,
    )
