"""Signed instance identity: the key that vouches for instance identity documents, and the three
signatures the metadata service serves beside each document.

AWS signs each instance's identity document and serves the signatures at
``dynamic/instance-identity/signature``, ``/pkcs7`` and ``/rsa2048``; verifiers (Vault's aws auth
method in ec2 mode, SPIRE's aws_iid attestor, ``openssl smime``) check them against a regional
certificate they were given beforehand. RoleCall does the same with one RSA-2048 key per
installation: :func:`create_identity_key` makes it and its long-lived self-signed certificate
(the one an operator hands to verifiers), and :class:`IdentitySigner` signs documents with it.

The bodies are laid out as AWS serves them: base64 in lines of 76 characters, no trailing line
break, and for the PKCS #7 ones no PEM header (verifiers add ``-----BEGIN PKCS7-----`` lines
themselves). ``pkcs7`` and ``rsa2048`` are the same SignedData: AWS signs them with two keys
(DSA with SHA-1, RSA-2048 with SHA-256) for historical reasons; one RSA-2048 key with SHA-256
answers both, and a verifier pinned to the certificate checks either. The certificate is not
embedded, as on AWS: a verifier must bring the one it trusts, never take the signer's word.

Everything here takes and returns PEM bytes; reading and writing files is the caller's business.
The SignedData's signing time is the machine's clock at :meth:`IdentitySigner.sign` (the
``cryptography`` builder takes no time); everything else takes ``now``.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from controller.nodeca import self_signed, signing_only

KEY_SIZE = 2048
#: AWS's regional certificates are valid for some 180 years: the certificate is pinned by the
#: verifier, so its expiry would only be a day on which every attestation fails at once (OpenSSL
#: with ``-CAfile`` and ``go.mozilla.org/pkcs7`` check it). The key is replaced by the operator's
#: own schedule instead (docs/operations.md).
CERTIFICATE_VALIDITY = timedelta(days=100 * 365)
#: Certificates start a little before they are made, so a verifier whose clock is behind accepts.
BACKDATE = timedelta(minutes=5)
#: AWS's bodies are MIME base64: lines of 76 characters.
LINE_LENGTH = 76
COMMON_NAME = "RoleCall instance identity"
ORGANIZATION = "RoleCall"
#: A region name as EC2 spells them (``us-east-1``, ``eu-central-2``, ``us-gov-west-1``).
REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-[0-9]+")

#: Binary: the document's bytes are signed and embedded as they are (S/MIME would turn each
#: "\n" into "\r\n"). NoCerts: the certificate is not embedded (above). NoCapabilities: the
#: signed attributes are AWS's three (content type, signing time, message digest).
_PKCS7_OPTIONS = (
    pkcs7.PKCS7Options.Binary,
    pkcs7.PKCS7Options.NoCerts,
    pkcs7.PKCS7Options.NoCapabilities,
)


class IdentityError(ValueError):
    """A region, key, certificate or document cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class IdentitySignatures:
    """The bodies the metadata service serves beside an identity document, each exactly as AWS
    lays it out (base64 lines of 76 characters, no final line break)."""

    #: ``dynamic/instance-identity/signature``: RSA (PKCS #1 v1.5) over the SHA-256 digest of
    #: the document's bytes.
    signature: str
    #: ``dynamic/instance-identity/pkcs7``: a DER PKCS #7 SignedData holding the document,
    #: SHA-256 with RSA, without the certificate and without PEM header lines.
    pkcs7: str
    #: ``dynamic/instance-identity/rsa2048``: the same SignedData as ``pkcs7``.
    rsa2048: str


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def check_region(region: str) -> str:
    """``region`` if it is spelt as an EC2 region name; otherwise IdentityError."""
    if not REGION.fullmatch(region):
        raise IdentityError(
            f"a region is spelt like us-east-1: lowercase letters, digits and '-', ending in a"
            f" number (got {region!r})"
        )
    return region


def create_identity_key(now: datetime, region: str) -> tuple[bytes, bytes]:
    """A new identity key and its self-signed certificate for ``region``: ``(key_pem,
    certificate_pem)``. The key is RSA-2048, unencrypted PKCS #8, for the caller to store with
    mode 0600; the certificate is the one verifiers are given, like AWS's regional certificate."""
    check_region(region)
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{COMMON_NAME} {region}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    start = _utc(now) - BACKDATE
    builder = self_signed(name, key.public_key(), start, start + CERTIFICATE_VALIDITY)
    # It signs documents, never certificates: no verifier may take it for a CA.
    certificate = signing_only(builder, key.public_key()).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def wrapped_base64(data: bytes) -> str:
    """``data`` in base64 as AWS's metadata service writes it: lines of 76 characters joined by
    "\\n", without a line break after the last."""
    return base64.encodebytes(data).decode("ascii").rstrip("\n")


class IdentitySigner:
    """Signs instance identity documents with one key.

    The key and certificate are parsed once, here (loading an RSA key checks it: some 50 ms):
    :meth:`sign` runs for every instance RunInstances launches, and costs two RSA-2048
    signatures, 1.5 to 2 ms (``bench/identity_sign.py``).
    """

    def __init__(self, key_pem: bytes, certificate_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            # The key's text is never quoted back.
            raise IdentityError("the identity key is not an unencrypted PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise IdentityError("the identity key is not an RSA key")
        if key.key_size < KEY_SIZE:
            raise IdentityError(
                f"the identity key has {key.key_size} bits; it needs at least {KEY_SIZE}"
            )
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError:
            raise IdentityError("the identity certificate is not a PEM certificate") from None
        if certificate.public_key() != key.public_key():
            raise IdentityError(
                "the identity key does not belong to the identity certificate"
                f" ({certificate.subject.rfc4514_string()})"
            )
        self._key = key
        self._certificate = certificate
        self._certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def certificate_pem(self) -> bytes:
        """The certificate verifiers check the signatures with (never the key)."""
        return self._certificate_pem

    def __repr__(self) -> str:
        return f"IdentitySigner({self._certificate.subject.rfc4514_string()})"

    def sign(self, document: bytes) -> IdentitySignatures:
        """The three signature bodies of ``document``, whose bytes are signed as given.

        The document must be a JSON object's text (its first byte ``{``): so no document can
        ever be read as the DER of the signed attributes (a SET: first byte 0x31) that the
        SignedData's signature covers with the same key.
        """
        if not document.startswith(b"{"):
            raise IdentityError("an identity document is a JSON object: it starts with '{'")
        signature = self._key.sign(document, padding.PKCS1v15(), hashes.SHA256())
        signed_data = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(document)
            .add_signer(self._certificate, self._key, hashes.SHA256())
            .sign(serialization.Encoding.DER, _PKCS7_OPTIONS)
        )
        enveloped = wrapped_base64(signed_data)
        return IdentitySignatures(
            signature=wrapped_base64(signature), pkcs7=enveloped, rsa2048=enveloped
        )
