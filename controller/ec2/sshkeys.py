"""SSH keys for EC2 key pairs: read what ImportKeyPair is given, make what CreateKeyPair returns,
and fingerprint both the way EC2 does.

Pure: text in, values out, with the ``cryptography`` package for every parse and digest. What is
stored of a key is its OpenSSH public-key line (``TYPE BASE64 NAME``); a private key made here is
handed to the caller once and kept nowhere (`NewKeyPair` never shows it in its repr).

EC2's fingerprints are not one rule (its API reference, KeyPairInfo.keyFingerprint):

- an imported RSA key: MD5 of the DER SubjectPublicKeyInfo, hex pairs joined by ``:`` (EC2 calls it
  RFC 4716's fingerprint, but RFC 4716 and ``ssh-keygen -l -E md5`` hash the SSH wire blob, and
  EC2's answers do not match those: it is ``openssl pkey -pubin -outform DER | openssl md5 -c``);
- a created RSA key: SHA-1 of the DER PKCS#8 private key, hex pairs joined by ``:``;
- an Ed25519 key, imported or created: base64 of the SHA-256 of the SSH wire blob, which is what
  ``ssh-keygen -l`` prints after ``SHA256:``, here with base64's ``=`` padding as EC2 shows it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

#: What ``KeyType`` may be, as in EC2.
KEY_TYPES = ("rsa", "ed25519")
#: The RSA moduli ImportKeyPair takes. EC2 also takes 1,024 bits; RoleCall does not (see
#: docs/decisions.md, issue 12).
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
#: CreateKeyPair's RSA keys, as EC2 makes them.
CREATED_RSA_BITS = 2048
#: More material than any supported key with a long comment or RFC 4716 headers.
MAX_MATERIAL_BYTES = 16 * 1024

_SSH_NAMES = {"rsa": "ssh-rsa", "ed25519": "ssh-ed25519"}
_RFC4716_BEGIN = "---- BEGIN SSH2 PUBLIC KEY ----"
_RFC4716_END = "---- END SSH2 PUBLIC KEY ----"

PublicKeyObject = rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class KeyFormatError(ValueError):
    """The material is not a public key RoleCall takes; the message says why, for the caller."""


@dataclass(frozen=True)
class PublicKey:
    """A public key EC2 can hold: RSA of 2,048 to 4,096 bits, or Ed25519."""

    key: PublicKeyObject

    @property
    def key_type(self) -> str:
        return "rsa" if isinstance(self.key, rsa.RSAPublicKey) else "ed25519"

    @property
    def bits(self) -> int:
        return self.key.key_size if isinstance(self.key, rsa.RSAPublicKey) else 256

    @property
    def blob(self) -> bytes:
        """The SSH wire encoding (RFC 4253 6.6): what an OpenSSH line's base64 decodes to."""
        return base64.b64decode(self._openssh().split()[1])

    def openssh_line(self, comment: str) -> str:
        """The key as one authorized_keys line, with ``comment`` (EC2 puts the key's name)."""
        return f"{self._openssh().decode('ascii')} {comment}"

    def _openssh(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )


@dataclass(frozen=True)
class NewKeyPair:
    """A key pair made for CreateKeyPair: the private key, to be returned once, and what is kept."""

    public: PublicKey
    fingerprint: str
    #: The unencrypted private key in EC2's format: PKCS#1 PEM for RSA, OpenSSH's for Ed25519.
    private_key: str = field(repr=False)


def decode_material(text: str) -> bytes:
    """``PublicKeyMaterial`` as sent: a blob, so base64 on the wire (SDKs encode it)."""
    if len(text) > (MAX_MATERIAL_BYTES + 2) // 3 * 4:
        raise KeyFormatError(
            f"the material is longer than any supported key ({MAX_MATERIAL_BYTES:,} bytes)"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(
            "PublicKeyMaterial must be base64-encoded (SDKs do this; the aws CLI v2 reads a file"
            " with fileb://)"
        ) from None


def parse_public_key(material: bytes) -> PublicKey:
    """The key in ``material``: an OpenSSH public-key line (``ssh-rsa AAAA… comment``), an RFC 4716
    SSH2 public key file, or base64 of a DER SubjectPublicKeyInfo, as EC2 takes them.

    Anything else, or a key type or size RoleCall does not take, is a `KeyFormatError`.
    """
    if len(material) > MAX_MATERIAL_BYTES:
        raise KeyFormatError(
            f"the material is longer than any supported key ({MAX_MATERIAL_BYTES:,} bytes)"
        )
    try:
        text = material.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFormatError("the material is not ASCII text") from None
    text = text.strip()
    if not text:
        raise KeyFormatError("the material is empty")
    if text.startswith(_RFC4716_BEGIN):
        key = _from_rfc4716(text)
    elif text.startswith(("ssh-", "ecdsa-", "sk-")):
        key = _from_openssh_line(text)
    else:
        key = _from_der_base64(text)
    return _checked(key)


def import_fingerprint(public: PublicKey) -> str:
    """The fingerprint EC2 gives a key ImportKeyPair stored."""
    if isinstance(public.key, rsa.RSAPublicKey):
        spki = public.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return _colon_hex(hashlib.md5(spki, usedforsecurity=False).digest())
    return _sha256_base64(public.blob)


def generate(key_type: str) -> NewKeyPair:
    """A new key pair of ``key_type`` (``rsa``: 2,048 bits; ``ed25519``) as CreateKeyPair makes."""
    if key_type == "rsa":
        private_rsa = rsa.generate_private_key(public_exponent=65537, key_size=CREATED_RSA_BITS)
        pkcs8 = private_rsa.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem = private_rsa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = PublicKey(private_rsa.public_key())
        fingerprint = _colon_hex(hashlib.sha1(pkcs8, usedforsecurity=False).digest())
        return NewKeyPair(public, fingerprint, pem.decode("ascii"))
    if key_type == "ed25519":
        private_ed = ed25519.Ed25519PrivateKey.generate()
        pem = private_ed.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = PublicKey(private_ed.public_key())
        return NewKeyPair(public, _sha256_base64(public.blob), pem.decode("ascii"))
    raise ValueError(f"unknown key type {key_type!r}")


def _from_openssh_line(text: str) -> object:
    if "\n" in text or "\r" in text:
        raise KeyFormatError("the material holds more than one line; import one key at a time")
    words = text.split()
    if len(words) < 2:
        raise KeyFormatError("an OpenSSH public key is TYPE BASE64 [COMMENT]")
    return _load_openssh(words[0], words[1])


def _from_rfc4716(text: str) -> object:
    """The key of an RFC 4716 file: header lines (``Tag: value``, continued by a final ``\\``)
    are skipped; the base64 body between the markers is the SSH wire blob."""
    lines = [line.strip() for line in text.splitlines()]
    if _RFC4716_END not in lines:
        raise KeyFormatError(f"an RFC 4716 key ends with {_RFC4716_END!r}")
    body: list[str] = []
    continued = False
    for line in lines[1 : lines.index(_RFC4716_END)]:
        if continued or ":" in line:
            continued = line.endswith("\\")
            continue
        body.append(line)
    encoded = "".join(body)
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("the RFC 4716 key's body is not base64") from None
    if len(blob) < 4:
        raise KeyFormatError("the RFC 4716 key's body is too short")
    name_length = int.from_bytes(blob[:4], "big")
    name = blob[4 : 4 + name_length]
    if len(name) != name_length or not name.isascii():
        raise KeyFormatError("the RFC 4716 key's body does not start with a key type")
    return _load_openssh(name.decode("ascii"), encoded)


def _from_der_base64(text: str) -> object:
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(
            "expected an OpenSSH public key (ssh-rsa or ssh-ed25519 AAAA…), an RFC 4716 SSH2"
            " public key file, or base64 of a DER public key"
        ) from None
    try:
        return serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFormatError("the base64 text is not a DER-encoded public key") from None


def _load_openssh(type_name: str, encoded: str) -> object:
    if type_name not in _SSH_NAMES.values():
        raise KeyFormatError(
            f"{_printable(type_name)} keys are not supported; use ssh-rsa or ssh-ed25519"
        )
    try:
        return serialization.load_ssh_public_key(f"{type_name} {encoded}".encode("ascii"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFormatError(f"the {type_name} key's base64 body does not decode to one") from None


def _checked(key: object) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise KeyFormatError(
                f"an RSA key of {key.key_size} bits; RoleCall takes {MIN_RSA_BITS} to"
                f" {MAX_RSA_BITS} bits"
            )
        return PublicKey(key)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return PublicKey(key)
    kind = "ECDSA" if isinstance(key, ec.EllipticCurvePublicKey) else "DSA or other"
    raise KeyFormatError(f"{kind} keys are not supported; use RSA or Ed25519")


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in digest)


def _sha256_base64(blob: bytes) -> str:
    return base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii")


def _printable(text: str) -> str:
    shown = "".join(char if char.isprintable() else "?" for char in text[:40])
    return shown + ("…" if len(text) > 40 else "")
