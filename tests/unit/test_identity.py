"""Signed instance identity: the key and certificate ``create_identity_key`` makes, the three
bodies ``IdentitySigner.sign`` returns (laid out as AWS's metadata service serves them), and that
each verifies against the certificate alone, in the ``cryptography`` package and in the real
``openssl`` command, and fails for a document changed by one byte."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from controller.identity import (
    BACKDATE,
    CERTIFICATE_VALIDITY,
    IdentityError,
    IdentitySignatures,
    IdentitySigner,
    create_identity_key,
    wrapped_base64,
)
from controller.nodeca import create_ca

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
#: Two keys for the module: an RSA-2048 key takes a tenth of a second or more to make.
KEY_PEM, CERT_PEM = create_identity_key(NOW, "us-east-1")
OTHER_KEY_PEM, OTHER_CERT_PEM = create_identity_key(NOW, "eu-west-1")
SIGNER = IdentitySigner(KEY_PEM, CERT_PEM)
CERTIFICATE = x509.load_pem_x509_certificate(CERT_PEM)
#: Laid out as AWS lays its documents out: line breaks inside, none at the end.
DOCUMENT = (
    b'{\n  "accountId" : "111122223333",\n  "architecture" : "x86_64",\n'
    b'  "availabilityZone" : "us-east-1a",\n  "imageId" : "emi-12345678",\n'
    b'  "instanceId" : "i-0123456789abcdef0",\n  "instanceType" : "m1.small",\n'
    b'  "pendingTime" : "2025-03-01T12:00:00Z",\n  "privateIp" : "10.0.0.5",\n'
    b'  "region" : "us-east-1",\n  "version" : "2017-09-30"\n}'
)
SIGNATURES = SIGNER.sign(DOCUMENT)
BODIES = [field.name for field in fields(IdentitySignatures)]


def tampered(document: bytes) -> bytes:
    """``document`` with one byte changed (a digit of the account id)."""
    position = document.index(b"1111")
    return document[:position] + b"9" + document[position + 1 :]


def decoded(body: str) -> bytes:
    return base64.b64decode(body.replace("\n", ""), validate=True)


# --- the key and the certificate --------------------------------------------------------------


def test_the_certificate_is_self_signed_rsa_2048_naming_the_region() -> None:
    assert CERTIFICATE.subject == CERTIFICATE.issuer
    CERTIFICATE.verify_directly_issued_by(CERTIFICATE)
    common_name = CERTIFICATE.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "RoleCall instance identity us-east-1"
    public_key = CERTIFICATE.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 2048
    assert CERTIFICATE.signature_hash_algorithm is not None
    assert CERTIFICATE.signature_hash_algorithm.name == "sha256"


def test_the_certificate_signs_documents_only_and_is_no_ca() -> None:
    constraints = CERTIFICATE.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = CERTIFICATE.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.key_encipherment


def test_the_certificate_is_long_lived_from_a_little_before_now() -> None:
    assert CERTIFICATE.not_valid_before_utc == NOW - BACKDATE
    assert CERTIFICATE.not_valid_after_utc == NOW - BACKDATE + CERTIFICATE_VALIDITY
    assert CERTIFICATE.not_valid_after_utc.year >= NOW.year + 99


def test_the_key_is_unencrypted_pkcs8_and_is_the_certificates() -> None:
    assert KEY_PEM.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(KEY_PEM, password=None)
    assert key.public_key() == CERTIFICATE.public_key()


def test_each_new_identity_has_its_own_key() -> None:
    assert OTHER_KEY_PEM != KEY_PEM
    other = x509.load_pem_x509_certificate(OTHER_CERT_PEM)
    assert other.public_key() != CERTIFICATE.public_key()
    assert "eu-west-1" in other.subject.rfc4514_string()


@pytest.mark.parametrize("region", ["", "US-EAST-1", "us_east_1", "us-east", "us-east-1\n"])
def test_a_region_not_spelt_as_ec2_spells_them_is_refused(region: str) -> None:
    with pytest.raises(IdentityError, match="a region is spelt like us-east-1"):
        create_identity_key(NOW, region)


# --- the signer refuses what cannot sign ------------------------------------------------------


def test_a_key_that_is_not_the_certificates_is_refused() -> None:
    with pytest.raises(IdentityError, match="does not belong to the identity certificate"):
        IdentitySigner(OTHER_KEY_PEM, CERT_PEM)


def test_a_key_that_is_not_pem_is_refused_without_quoting_it() -> None:
    broken = KEY_PEM.replace(b"A", b"B", 40)
    with pytest.raises(IdentityError, match="not an unencrypted PEM private key") as refused:
        IdentitySigner(broken, CERT_PEM)
    assert b"B" * 3 not in str(refused.value).encode()
    assert KEY_PEM.splitlines()[1].decode() not in str(refused.value)


def test_a_key_that_is_not_rsa_is_refused() -> None:
    ec_key, ec_cert = create_ca(NOW)
    with pytest.raises(IdentityError, match="not an RSA key"):
        IdentitySigner(ec_key, ec_cert)


def test_a_certificate_that_is_not_pem_is_refused() -> None:
    with pytest.raises(IdentityError, match="not a PEM certificate"):
        IdentitySigner(
            KEY_PEM, b"-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n"
        )


@pytest.mark.parametrize("document", [b"", b"[1, 2]", b" {}", b"\x31\x69"])
def test_a_document_that_is_not_a_json_object_is_refused(document: bytes) -> None:
    with pytest.raises(IdentityError, match=r"starts with '\{'"):
        SIGNER.sign(document)


def test_the_signer_shows_its_certificate_and_never_its_key() -> None:
    assert SIGNER.certificate_pem == CERT_PEM
    assert b"PRIVATE" not in SIGNER.certificate_pem
    assert "RoleCall instance identity us-east-1" in repr(SIGNER)
    secret_lines = KEY_PEM.decode().splitlines()[1:-1]
    shown = repr(SIGNER) + repr(SIGNATURES) + SIGNER.certificate_pem.decode()
    assert not any(line in shown for line in secret_lines)


# --- the bodies, as AWS lays them out ---------------------------------------------------------


@pytest.mark.parametrize("name", BODIES)
def test_each_body_is_base64_in_lines_of_76_without_a_final_line_break(name: str) -> None:
    body = getattr(SIGNATURES, name)
    lines = body.split("\n")
    assert len(lines) > 1
    assert all(len(line) == 76 for line in lines[:-1])
    assert 0 < len(lines[-1]) <= 76
    assert not body.endswith("\n") and "\r" not in body and "-----" not in body
    assert wrapped_base64(decoded(body)) == body


def test_the_signature_body_is_one_rsa_2048_signature() -> None:
    assert len(decoded(SIGNATURES.signature)) == 256


def test_pkcs7_and_rsa2048_are_the_same_signed_data() -> None:
    assert SIGNATURES.pkcs7 == SIGNATURES.rsa2048


def test_the_document_is_signed_as_given_whatever_its_line_breaks() -> None:
    crlf = DOCUMENT.replace(b"\n", b"\r\n")
    assert signed_data(SIGNER.sign(crlf).pkcs7).content == crlf
    assert signed_data(SIGNATURES.pkcs7).content == DOCUMENT


# --- verified with the cryptography package ---------------------------------------------------


def test_the_signature_verifies_with_the_certificate() -> None:
    public_key = CERTIFICATE.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(decoded(SIGNATURES.signature), DOCUMENT, padding.PKCS1v15(), hashes.SHA256())


def test_the_signature_fails_for_a_document_changed_by_one_byte() -> None:
    public_key = CERTIFICATE.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    with pytest.raises(InvalidSignature):
        public_key.verify(
            decoded(SIGNATURES.signature), tampered(DOCUMENT), padding.PKCS1v15(), hashes.SHA256()
        )


@dataclass(frozen=True)
class Element:
    """One DER element: its tag, its contents and its whole encoding."""

    tag: int
    contents: bytes
    encoded: bytes

    def children(self) -> list[Element]:
        return elements(self.contents)


def elements(data: bytes) -> list[Element]:
    """The DER elements laid end to end in ``data`` (definite lengths, one-byte tags: all that
    a SignedData of cryptography's uses)."""
    found = []
    position = 0
    while position < len(data):
        start = position
        tag, length = data[position], data[position + 1]
        position += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[position : position + count], "big")
            position += count
        found.append(
            Element(tag, data[position : position + length], data[start : position + length])
        )
        position += length
    assert position == len(data), "a DER element runs past its container"
    return found


# The object identifiers' DER contents.
SIGNED_DATA = bytes.fromhex("2a864886f70d010702")
DATA = bytes.fromhex("2a864886f70d010701")
SHA256 = bytes.fromhex("608648016503040201")
RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")
CONTENT_TYPE = bytes.fromhex("2a864886f70d010903")
MESSAGE_DIGEST = bytes.fromhex("2a864886f70d010904")
SIGNING_TIME = bytes.fromhex("2a864886f70d010905")


@dataclass(frozen=True)
class SignedData:
    content: bytes
    has_certificates: bool
    digest_algorithms: list[bytes]
    issuer: bytes
    serial: int
    signer_digest_algorithm: bytes
    attributes: dict[bytes, bytes]
    #: The signed attributes as they are signed: a SET (tag 0x31), not the [0] they are stored as.
    signed_attributes: bytes
    signature_algorithm: bytes
    signature: bytes


def signed_data(body: str) -> SignedData:
    """Take a pkcs7 body apart, checking its shape on the way (RFC 2315, section 9)."""
    (content_info,) = elements(decoded(body))
    content_type, explicit = content_info.children()
    assert content_type.contents == SIGNED_DATA and explicit.tag == 0xA0
    (signed,) = explicit.children()
    version, digest_algorithms, encapsulated, *rest = signed.children()
    assert version.contents == b"\x01"
    encapsulated_type, encapsulated_explicit = encapsulated.children()
    assert encapsulated_type.contents == DATA
    (content,) = encapsulated_explicit.children()
    has_certificates = rest[0].tag == 0xA0
    (signer_info,) = rest[-1].children()
    parts = signer_info.children()
    signer_version, issuer_and_serial, digest_algorithm, attributes, algorithm, signature = parts
    assert signer_version.contents == b"\x01" and attributes.tag == 0xA0
    issuer, serial = issuer_and_serial.children()
    found = {}
    for attribute in attributes.children():
        oid, values = attribute.children()
        (value,) = values.children()
        found[oid.contents] = value.contents
    return SignedData(
        content=content.contents,
        has_certificates=has_certificates,
        digest_algorithms=[item.children()[0].contents for item in digest_algorithms.children()],
        issuer=issuer.encoded,
        serial=int.from_bytes(serial.contents, "big", signed=True),
        signer_digest_algorithm=digest_algorithm.children()[0].contents,
        attributes=found,
        signed_attributes=b"\x31" + attributes.encoded[1:],
        signature_algorithm=algorithm.children()[0].contents,
        signature=signature.contents,
    )


def test_the_signed_data_holds_the_document_and_names_the_signer_without_its_certificate() -> None:
    data = signed_data(SIGNATURES.pkcs7)
    assert data.content == DOCUMENT
    assert not data.has_certificates
    assert data.digest_algorithms == [SHA256] and data.signer_digest_algorithm == SHA256
    assert data.issuer == CERTIFICATE.issuer.public_bytes()
    assert data.serial == CERTIFICATE.serial_number
    assert data.signature_algorithm == RSA_ENCRYPTION


def test_the_signed_attributes_are_awss_three() -> None:
    data = signed_data(SIGNATURES.pkcs7)
    assert set(data.attributes) == {CONTENT_TYPE, SIGNING_TIME, MESSAGE_DIGEST}
    assert data.attributes[CONTENT_TYPE] == DATA
    assert data.attributes[MESSAGE_DIGEST] == hashlib.sha256(DOCUMENT).digest()


def test_the_signing_time_lies_within_the_certificates_validity() -> None:
    # go.mozilla.org/pkcs7 refuses a signing time outside the certificate's validity.
    text = signed_data(SIGNATURES.pkcs7).attributes[SIGNING_TIME].decode()
    signed_at = datetime.strptime(text, "%y%m%d%H%M%SZ").replace(tzinfo=UTC)
    assert CERTIFICATE.not_valid_before_utc <= signed_at <= CERTIFICATE.not_valid_after_utc


def test_the_signed_data_verifies_with_the_certificate() -> None:
    data = signed_data(SIGNATURES.pkcs7)
    public_key = CERTIFICATE.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(data.signature, data.signed_attributes, padding.PKCS1v15(), hashes.SHA256())
    assert data.attributes[MESSAGE_DIGEST] == hashlib.sha256(data.content).digest()


def test_the_signed_data_fails_for_a_document_changed_by_one_byte() -> None:
    body = wrapped_base64(decoded(SIGNATURES.pkcs7).replace(DOCUMENT, tampered(DOCUMENT)))
    data = signed_data(body)
    assert data.content == tampered(DOCUMENT)
    assert data.attributes[MESSAGE_DIGEST] != hashlib.sha256(data.content).digest()


def test_the_signed_data_fails_for_signed_attributes_changed_by_one_byte() -> None:
    data = signed_data(SIGNATURES.pkcs7)
    changed = data.signed_attributes[:-1] + bytes([data.signed_attributes[-1] ^ 1])
    public_key = CERTIFICATE.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    with pytest.raises(InvalidSignature):
        public_key.verify(data.signature, changed, padding.PKCS1v15(), hashes.SHA256())


# --- verified with the openssl command --------------------------------------------------------


def openssl(*arguments: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *arguments], capture_output=True, timeout=30, check=False)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """The certificate, its public key and the document, as a verifier would have them."""
    (tmp_path / "cert.pem").write_bytes(CERT_PEM)
    (tmp_path / "document").write_bytes(DOCUMENT)
    (tmp_path / "tampered").write_bytes(tampered(DOCUMENT))
    public = openssl("x509", "-pubkey", "-noout", "-in", tmp_path / "cert.pem")
    assert public.returncode == 0, public.stderr
    (tmp_path / "pubkey.pem").write_bytes(public.stdout)
    return tmp_path


def aws_pkcs7_file(path: Path, body: str) -> Path:
    """The body wrapped as AWS's guide says: a header line, the body, a line break, a footer."""
    path.write_text(f"-----BEGIN PKCS7-----\n{body}\n-----END PKCS7-----\n")
    return path


def test_openssl_command_is_installed() -> None:
    assert openssl("version").returncode == 0


@pytest.mark.parametrize("name", ["pkcs7", "rsa2048"])
def test_openssl_smime_verifies_the_body_as_awss_guide_says(files: Path, name: str) -> None:
    wrapped = aws_pkcs7_file(files / "pkcs7", getattr(SIGNATURES, name))
    result = openssl(
        "smime", "-verify", "-inform", "PEM", "-in", wrapped, "-certfile", files / "cert.pem",
        "-noverify", "-binary", "-out", files / "verified",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"Verification successful" in result.stderr
    assert (files / "verified").read_bytes() == DOCUMENT


@pytest.mark.parametrize("name", ["pkcs7", "rsa2048"])
def test_openssl_cms_verifies_the_body_up_to_the_pinned_certificate(files: Path, name: str) -> None:
    (files / "signed.der").write_bytes(decoded(getattr(SIGNATURES, name)))
    result = openssl(
        "cms", "-verify", "-inform", "DER", "-in", files / "signed.der",
        "-certfile", files / "cert.pem", "-CAfile", files / "cert.pem", "-binary",
        "-out", files / "verified",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (files / "verified").read_bytes() == DOCUMENT


def test_openssl_cms_refuses_the_body_with_another_certificate(files: Path) -> None:
    (files / "other.pem").write_bytes(OTHER_CERT_PEM)
    (files / "signed.der").write_bytes(decoded(SIGNATURES.pkcs7))
    result = openssl(
        "cms", "-verify", "-inform", "DER", "-in", files / "signed.der",
        "-certfile", files / "other.pem", "-CAfile", files / "other.pem", "-binary",
        "-out", files / "verified",
    )  # fmt: skip
    assert result.returncode != 0


def test_openssl_refuses_the_body_with_a_document_changed_by_one_byte(files: Path) -> None:
    changed = decoded(SIGNATURES.pkcs7).replace(DOCUMENT, tampered(DOCUMENT))
    wrapped = aws_pkcs7_file(files / "pkcs7", wrapped_base64(changed))
    smime = openssl(
        "smime", "-verify", "-inform", "PEM", "-in", wrapped, "-certfile", files / "cert.pem",
        "-noverify", "-binary", "-out", files / "verified",
    )  # fmt: skip
    assert smime.returncode != 0
    assert b"Verification successful" not in smime.stderr
    (files / "signed.der").write_bytes(changed)
    cms = openssl(
        "cms", "-verify", "-inform", "DER", "-in", files / "signed.der",
        "-certfile", files / "cert.pem", "-CAfile", files / "cert.pem", "-binary",
        "-out", files / "verified",
    )  # fmt: skip
    assert cms.returncode != 0
    assert b"content verify error" in cms.stderr


def test_openssl_dgst_verifies_the_signature_body(files: Path) -> None:
    (files / "signature.bin").write_bytes(decoded(SIGNATURES.signature))
    result = openssl(
        "dgst", "-sha256", "-verify", files / "pubkey.pem", "-signature", files / "signature.bin",
        files / "document",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"Verified OK"


def test_openssl_dgst_refuses_the_signature_for_a_document_changed_by_one_byte(
    files: Path,
) -> None:
    (files / "signature.bin").write_bytes(decoded(SIGNATURES.signature))
    result = openssl(
        "dgst", "-sha256", "-verify", files / "pubkey.pem", "-signature", files / "signature.bin",
        files / "tampered",
    )  # fmt: skip
    assert result.returncode != 0
    assert b"Verification failure" in result.stdout
