"""The node certificate authority: the CA, the node API's server certificate, node certificates.

The node API (``:8775``) is HTTPS with client certificates. ``rolecall-controller init`` makes a CA
(:func:`create_ca`) and the node API's own server certificate (:func:`create_server_certificate`);
``enroll-node`` issues each node a client certificate whose subject names it
(:func:`issue_node_certificate`). :func:`verify_node_certificate` is the pure form of the check the
node API makes after TLS has verified the chain; the API then compares :func:`serial_hex` with the
serial recorded for the node, so a re-issued or retired node's old certificate is refused.

Everything here takes and returns PEM bytes and takes ``now``; reading and writing files is the
caller's business. Keys are EC P-256 (what every TLS stack accepts for client authentication),
written unencrypted in PKCS #8 for the caller to store with mode 0600.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: A node name is a host name (a set of labels), lowercase: it is also the certificate's subject.
NODE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
#: A DNS name for the node API's server certificate.
_DNS_NAME = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)

CA_VALIDITY = timedelta(days=3650)
NODE_CERTIFICATE_DAYS = 825
SERVER_CERTIFICATE_DAYS = 825
#: Certificates start a little before they are made, so a peer whose clock is behind accepts them.
BACKDATE = timedelta(minutes=5)
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")

CA_COMMON_NAME = "RoleCall node CA"
ORGANIZATION = "RoleCall"
NODE_ORGANIZATION = "RoleCall node"
SERVER_COMMON_NAME = "RoleCall node API"


class NodeCAError(ValueError):
    """A name, key or certificate cannot be used; the message says which and why."""


class NodeNameError(NodeCAError):
    """A node name is not a valid host name."""


class NodeCertificateError(NodeCAError):
    """A certificate is not a valid node certificate from this CA."""


def check_node_name(name: str, what: str = "NAME") -> str:
    """``name`` if it is a valid node name; otherwise NodeNameError naming ``what`` (a flag)."""
    if not NODE_NAME.fullmatch(name):
        raise NodeNameError(
            f"{what} must be a node name: 1 to 63 characters, lowercase letters, digits, '.' and"
            f" '-', starting with a letter or digit (got {name!r})"
        )
    return name


def serial_hex(serial: int) -> str:
    """A certificate serial as the store records it: lowercase hex, 40 digits."""
    return f"{serial:040x}"


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_certificate(cert_pem: bytes, what: str = "certificate") -> x509.Certificate:
    """The certificate in PEM text; NodeCertificateError naming ``what`` if there is none."""
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise NodeCertificateError(f"{what} is not a PEM certificate") from None


def _load_authority(
    ca_key_pem: bytes, ca_cert_pem: bytes
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError):
        # The key's text is never quoted back.
        raise NodeCAError("the CA key is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise NodeCAError("the CA key is not an EC key")
    certificate = load_certificate(ca_cert_pem, "the CA certificate")
    if certificate.public_key() != key.public_key():
        raise NodeCAError("the CA key does not belong to the CA certificate")
    return key, certificate


def _leaf_builder(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    if days < 1:
        raise NodeCAError(f"a certificate must be valid for at least one day (got {days})")
    start = _utc(now) - BACKDATE
    # A certificate never claims to outlive the CA that vouches for it.
    end = min(_utc(now) + timedelta(days=days), ca_certificate.not_valid_after_utc)
    ca_key_identifier = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    return signing_only(builder, key.public_key()).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_identifier),
        critical=False,
    )


def self_signed(
    name: x509.Name, public_key: CertificatePublicKeyTypes, start: datetime, end: datetime
) -> x509.CertificateBuilder:
    """A certificate of `public_key` that names itself as its issuer, valid from `start` to
    `end`, with a random serial; the caller adds its extensions and signs it."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


def signing_only(
    builder: x509.CertificateBuilder, public_key: CertificatePublicKeyTypes
) -> x509.CertificateBuilder:
    """`builder` with the extensions of a certificate that signs and is no CA: not a CA
    (critical), digital signature its one key usage (critical), and its key's identifier."""
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_ca(now: datetime, *, common_name: str = CA_COMMON_NAME) -> tuple[bytes, bytes]:
    """A new self-signed CA for node certificates: ``(key_pem, cert_pem)``, valid ten years.

    It may sign end-entity certificates only (path length 0).
    """
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    certificate = (
        self_signed(name, key.public_key(), _utc(now) - BACKDATE, _utc(now) + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), certificate.public_bytes(serialization.Encoding.PEM)


def check_server_name(name: str, what: str = "a node API name") -> x509.GeneralName:
    """``name`` as a subject alternative name: an IP address or a lowercase DNS name.

    NodeCAError naming ``what`` (a flag) when it is neither.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(name):
        raise NodeCAError(f"{what} must be an IP address or a lowercase DNS name (got {name!r})")
    return x509.DNSName(name)


def create_server_certificate(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    now: datetime,
    names: Sequence[str] = DEFAULT_SERVER_NAMES,
    *,
    days: int = SERVER_CERTIFICATE_DAYS,
) -> tuple[bytes, bytes]:
    """The node API's TLS identity, signed by the CA: ``(key_pem, cert_pem)``.

    ``names`` are the DNS names and IP addresses agents use to reach the node API; each becomes a
    subject alternative name, which is what clients check.
    """
    if not names:
        raise NodeCAError("the node API certificate needs at least one DNS name or IP address")
    alternative_names = [check_server_name(name) for name in dict.fromkeys(names)]
    ca_key, ca_certificate = _load_authority(ca_key_pem, ca_cert_pem)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, SERVER_COMMON_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    certificate = (
        _leaf_builder(subject, key, ca_key, ca_certificate, now, days)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _key_pem(key), certificate.public_bytes(serialization.Encoding.PEM)


def server_certificate_names(cert_pem: bytes) -> list[str]:
    """The DNS names and IP addresses a server certificate is valid for, in its order."""
    certificate = load_certificate(cert_pem, "the node API certificate")
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in extension.value]


def issue_node_certificate(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    node_name: str,
    now: datetime,
    days: int = NODE_CERTIFICATE_DAYS,
) -> tuple[bytes, bytes, str]:
    """A client certificate naming ``node_name``: ``(key_pem, cert_pem, serial_hex)``."""
    check_node_name(node_name)
    ca_key, ca_certificate = _load_authority(ca_key_pem, ca_cert_pem)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, node_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_ORGANIZATION),
        ]
    )
    certificate = (
        _leaf_builder(subject, key, ca_key, ca_certificate, now, days)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return (
        _key_pem(key),
        certificate.public_bytes(serialization.Encoding.PEM),
        serial_hex(certificate.serial_number),
    )


def node_name_from_certificate(certificate: x509.Certificate) -> str:
    """The node a certificate names (its one subject common name), checked to be a node name."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise NodeCertificateError(
            f"a node certificate's subject has exactly one common name (found {len(names)})"
        )
    name = names[0].value
    if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
        raise NodeCertificateError(f"the certificate's common name {name!r} is not a node name")
    return name


def verify_node_certificate(cert_pem: bytes, ca_cert_pem: bytes, now: datetime) -> str:
    """The name of the node a certificate belongs to, if the CA issued it for client use and it
    is valid at ``now``; otherwise NodeCertificateError saying what is wrong."""
    certificate = load_certificate(cert_pem, "the node certificate")
    ca_certificate = load_certificate(ca_cert_pem, "the CA certificate")
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise NodeCertificateError(
            f"the certificate was not issued by this CA ({ca_certificate.subject.rfc4514_string()})"
        ) from None
    moment = _utc(now)
    if moment < certificate.not_valid_before_utc:
        raise NodeCertificateError(
            f"the certificate is not valid before {certificate.not_valid_before_utc.isoformat()}"
        )
    if moment > certificate.not_valid_after_utc:
        raise NodeCertificateError(
            f"the certificate expired at {certificate.not_valid_after_utc.isoformat()}"
        )
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        is_ca = constraints.value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        raise NodeCertificateError("the certificate is a CA certificate, not a node certificate")
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise NodeCertificateError(
            "the certificate is not for client authentication (no clientAuth extended key usage)"
        )
    return node_name_from_certificate(certificate)
