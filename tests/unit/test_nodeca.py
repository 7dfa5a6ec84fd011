"""The node CA: what its certificates say, what `verify_node_certificate` refuses, and that a real
TLS server requiring client certificates from the CA accepts a node and refuses strangers."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.nodeca import (
    BACKDATE,
    NodeCAError,
    NodeCertificateError,
    NodeNameError,
    check_node_name,
    create_ca,
    create_server_certificate,
    issue_node_certificate,
    node_name_from_certificate,
    serial_hex,
    server_certificate_names,
    verify_node_certificate,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
#: One CA for the whole module: making EC keys is cheap, but there is no need to repeat it.
CA_KEY, CA_CERT = create_ca(NOW)


def certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)  # type: ignore[type-var]


# --- the CA -----------------------------------------------------------------------------------


def test_the_ca_is_a_self_signed_p256_ca_for_end_entities_only() -> None:
    ca = certificate(CA_CERT)
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "RoleCall node CA"
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    constraints = extension(ca, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True and constraints.value.path_length == 0
    usage = extension(ca, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature


def test_the_ca_is_valid_for_ten_years_from_now() -> None:
    ca = certificate(CA_CERT)
    assert ca.not_valid_before_utc == NOW - BACKDATE
    assert ca.not_valid_after_utc == NOW + timedelta(days=3650)


def test_the_ca_key_is_an_unencrypted_pkcs8_key_matching_the_certificate() -> None:
    assert CA_KEY.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(CA_KEY, password=None)
    assert key.public_key() == certificate(CA_CERT).public_key()


def test_the_ca_common_name_can_be_chosen() -> None:
    _, cert_pem = create_ca(NOW, common_name="Lab CA")
    names = certificate(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert names[0].value == "Lab CA"


def test_two_cas_have_different_keys() -> None:
    _, other = create_ca(NOW)
    assert certificate(other).public_key() != certificate(CA_CERT).public_key()


# --- node certificates ------------------------------------------------------------------------


def test_a_node_certificate_verifies_against_its_ca_and_names_the_node() -> None:
    _, cert_pem, _ = issue_node_certificate(CA_KEY, CA_CERT, "hv-01.rack2", NOW)
    assert verify_node_certificate(cert_pem, CA_CERT, NOW + timedelta(days=30)) == "hv-01.rack2"
    node = certificate(cert_pem)
    assert node_name_from_certificate(node) == "hv-01.rack2"
    organization = node.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert organization[0].value == "RoleCall node"


def test_a_node_certificate_is_for_client_authentication_only_and_not_a_ca() -> None:
    node = certificate(issue_node_certificate(CA_KEY, CA_CERT, "hv1", NOW)[1])
    assert list(extension(node, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert extension(node, x509.BasicConstraints).value.ca is False
    assert extension(node, x509.KeyUsage).value.digital_signature


def test_a_node_certificate_lasts_825_days_by_default_and_reports_its_serial() -> None:
    key_pem, cert_pem, serial = issue_node_certificate(CA_KEY, CA_CERT, "hv1", NOW)
    node = certificate(cert_pem)
    assert node.not_valid_after_utc == NOW + timedelta(days=825)
    assert serial == serial_hex(node.serial_number)
    assert len(serial) == 40 and serial == serial.lower()
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == node.public_key()


def test_each_node_certificate_has_its_own_serial_and_key() -> None:
    first = issue_node_certificate(CA_KEY, CA_CERT, "hv1", NOW)
    second = issue_node_certificate(CA_KEY, CA_CERT, "hv1", NOW)
    assert first[2] != second[2]
    assert first[0] != second[0]


def test_a_node_certificate_never_outlives_its_ca() -> None:
    late = NOW + timedelta(days=3600)
    node = certificate(issue_node_certificate(CA_KEY, CA_CERT, "hv1", late, days=825)[1])
    assert node.not_valid_after_utc == certificate(CA_CERT).not_valid_after_utc


def test_a_certificate_from_another_ca_is_refused() -> None:
    other_key, other_cert = create_ca(NOW, common_name="Someone else")
    _, cert_pem, _ = issue_node_certificate(other_key, other_cert, "hv1", NOW)
    with pytest.raises(NodeCertificateError, match="not issued by this CA"):
        verify_node_certificate(cert_pem, CA_CERT, NOW)


def test_a_certificate_from_a_ca_with_the_same_name_but_another_key_is_refused() -> None:
    other_key, other_cert = create_ca(NOW)  # same subject as CA_CERT
    _, cert_pem, _ = issue_node_certificate(other_key, other_cert, "hv1", NOW)
    with pytest.raises(NodeCertificateError, match="not issued by this CA"):
        verify_node_certificate(cert_pem, CA_CERT, NOW)


def test_an_expired_certificate_is_refused() -> None:
    issued = NOW - timedelta(days=10)
    _, cert_pem, _ = issue_node_certificate(CA_KEY, CA_CERT, "hv1", issued, days=2)
    with pytest.raises(NodeCertificateError, match="expired at 2025-02-21T12:00:00"):
        verify_node_certificate(cert_pem, CA_CERT, NOW)


def test_a_certificate_is_refused_before_it_is_valid() -> None:
    _, cert_pem, _ = issue_node_certificate(CA_KEY, CA_CERT, "hv1", NOW + timedelta(days=1))
    with pytest.raises(NodeCertificateError, match="not valid before"):
        verify_node_certificate(cert_pem, CA_CERT, NOW)


def test_a_certificate_is_accepted_from_a_few_minutes_before_it_was_made() -> None:
    # Tolerates a verifier whose clock is a little behind the controller's.
    _, cert_pem, _ = issue_node_certificate(CA_KEY, CA_CERT, "hv1", NOW)
    assert verify_node_certificate(cert_pem, CA_CERT, NOW - timedelta(minutes=4)) == "hv1"


def test_a_server_certificate_is_refused_as_a_node_certificate() -> None:
    _, server_pem = create_server_certificate(CA_KEY, CA_CERT, NOW)
    with pytest.raises(NodeCertificateError, match="not for client authentication"):
        verify_node_certificate(server_pem, CA_CERT, NOW)


def test_the_ca_certificate_itself_is_refused_as_a_node_certificate() -> None:
    with pytest.raises(NodeCertificateError, match="CA certificate"):
        verify_node_certificate(CA_CERT, CA_CERT, NOW)


def test_text_that_is_no_certificate_is_refused() -> None:
    with pytest.raises(NodeCertificateError, match="node certificate is not a PEM certificate"):
        verify_node_certificate(b"hello", CA_CERT, NOW)


def test_a_ca_key_that_does_not_match_the_ca_certificate_is_refused() -> None:
    other_key, _ = create_ca(NOW)
    with pytest.raises(NodeCAError, match="does not belong to the CA certificate"):
        issue_node_certificate(other_key, CA_CERT, "hv1", NOW)


def test_a_ca_key_that_is_not_a_key_is_refused_without_quoting_it() -> None:
    with pytest.raises(NodeCAError, match="not an unencrypted PEM private key") as caught:
        issue_node_certificate(b"secret-ish text", CA_CERT, "hv1", NOW)
    assert "secret-ish" not in str(caught.value)


# --- node names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "hv1", "hv-01.rack2.example", "0", "a" * 63])
def test_host_names_are_node_names(name: str) -> None:
    assert check_node_name(name) == name


@pytest.mark.parametrize("name", ["", "HV1", "-hv", ".hv", "hv_1", "hv 1", "a" * 64, "hv1\n", "hé"])
def test_other_names_are_refused_naming_the_argument(name: str) -> None:
    with pytest.raises(NodeNameError, match=r"^NAME must be a node name"):
        check_node_name(name)
    with pytest.raises(NodeNameError):
        issue_node_certificate(CA_KEY, CA_CERT, name, NOW)


def test_a_certificate_whose_common_name_is_no_node_name_is_refused() -> None:
    ca = certificate(CA_CERT)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = serialization.load_pem_private_key(CA_KEY, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    odd = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Not A Node")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = odd.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(NodeCertificateError, match="'Not A Node' is not a node name"):
        verify_node_certificate(pem, CA_CERT, NOW)


# --- the node API's server certificate --------------------------------------------------------


def test_the_server_certificate_names_localhost_and_127_0_0_1_by_default() -> None:
    _, cert_pem = create_server_certificate(CA_KEY, CA_CERT, NOW)
    server = certificate(cert_pem)
    names = extension(server, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert server_certificate_names(cert_pem) == ["localhost", "127.0.0.1"]
    assert list(extension(server, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert extension(server, x509.BasicConstraints).value.ca is False
    server.verify_directly_issued_by(certificate(CA_CERT))


def test_the_server_certificate_carries_the_names_and_addresses_given() -> None:
    names = ["controller.example", "10.0.0.5", "fd00::5", "controller.example"]
    _, cert_pem = create_server_certificate(CA_KEY, CA_CERT, NOW, names)
    assert server_certificate_names(cert_pem) == ["controller.example", "10.0.0.5", "fd00::5"]


@pytest.mark.parametrize("name", ["Controller", "bad_name", "", "a..b", "-x.example"])
def test_a_server_name_that_is_no_dns_name_or_address_is_refused(name: str) -> None:
    with pytest.raises(NodeCAError, match="must be an IP address or a lowercase DNS name"):
        create_server_certificate(CA_KEY, CA_CERT, NOW, [name])


def test_a_server_certificate_needs_a_name() -> None:
    with pytest.raises(NodeCAError, match="at least one"):
        create_server_certificate(CA_KEY, CA_CERT, NOW, [])


# --- a real TLS handshake on loopback ---------------------------------------------------------

TIMEOUT = 5.0


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)
    return path


class Authority:
    """A CA made now (OpenSSL checks validity against the real clock) with its server files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.now = datetime.now(UTC)
        self.key, self.cert = create_ca(self.now)
        server_key, server_cert = create_server_certificate(self.key, self.cert, self.now)
        self.server_key = write(directory / "server.key", server_key, 0o600)
        self.server_cert = write(directory / "server.pem", server_cert)

    def client_files(self, stem: str, key_pem: bytes, cert_pem: bytes) -> tuple[Path, Path]:
        key = write(self.directory / f"{stem}.key", key_pem, 0o600)
        return write(self.directory / f"{stem}.pem", cert_pem), key

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self.cert.decode("ascii"))
        return context

    def client_context(self, files: tuple[Path, Path] | None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the host name too
        context.load_verify_locations(cadata=self.cert.decode("ascii"))
        if files is not None:
            context.load_cert_chain(*files)
        return context


def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[object, object]:
    """(what the server saw, what the client read): a node name and its echo, or the errors."""
    outcome: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                connection, _ = listener.accept()
                connection.settimeout(TIMEOUT)
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    peer = tls.getpeercert(binary_form=True)
                    assert peer is not None
                    name = node_name_from_certificate(x509.load_der_x509_certificate(peer))
                    outcome["server"] = name
                    tls.sendall(f"hello {name}".encode())
            except (OSError, NodeCAError) as error:
                outcome["server"] = error

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
                client_context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                client: object = tls.recv(100)
        except OSError as error:  # ssl.SSLError is an OSError
            client = error
        thread.join(TIMEOUT * 2)
        assert not thread.is_alive(), "the TLS server thread did not finish"
    return outcome["server"], client


def test_tls_server_requiring_the_ca_accepts_a_node_certificate(tmp_path: Path) -> None:
    authority = Authority(tmp_path)
    key_pem, cert_pem, _ = issue_node_certificate(
        authority.key, authority.cert, "hv1", authority.now
    )
    files = authority.client_files("node", key_pem, cert_pem)
    server, client = handshake(authority.server_context(), authority.client_context(files))
    assert server == "hv1"
    assert client == b"hello hv1"


def test_tls_server_refuses_a_certificate_from_a_foreign_ca(tmp_path: Path) -> None:
    authority = Authority(tmp_path)
    foreign_key, foreign_cert = create_ca(authority.now)
    key_pem, cert_pem, _ = issue_node_certificate(foreign_key, foreign_cert, "hv1", authority.now)
    files = authority.client_files("foreign", key_pem, cert_pem)
    server, client = handshake(authority.server_context(), authority.client_context(files))
    assert isinstance(server, ssl.SSLError)
    assert "certificate verify failed" in str(server)
    assert client != b"hello hv1"


def test_tls_server_refuses_a_server_certificate_offered_as_a_client_certificate(
    tmp_path: Path,
) -> None:
    authority = Authority(tmp_path)
    key_pem, cert_pem = create_server_certificate(authority.key, authority.cert, authority.now)
    files = authority.client_files("server-as-client", key_pem, cert_pem)
    server, client = handshake(authority.server_context(), authority.client_context(files))
    assert isinstance(server, ssl.SSLError)
    assert "certificate purpose" in str(server)
    assert not isinstance(client, bytes) or not client.startswith(b"hello")


def test_tls_server_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    authority = Authority(tmp_path)
    server, client = handshake(authority.server_context(), authority.client_context(None))
    assert isinstance(server, ssl.SSLError)
    assert not isinstance(client, bytes) or not client.startswith(b"hello")


def test_tls_client_trusting_the_ca_refuses_a_server_certificate_for_other_names(
    tmp_path: Path,
) -> None:
    authority = Authority(tmp_path)
    key_pem, cert_pem = create_server_certificate(
        authority.key, authority.cert, authority.now, ["controller.example"]
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(
        write(tmp_path / "other.pem", cert_pem), write(tmp_path / "other.key", key_pem, 0o600)
    )
    node_key, node_cert, _ = issue_node_certificate(
        authority.key, authority.cert, "hv1", authority.now
    )
    files = authority.client_files("node", node_key, node_cert)
    _, client = handshake(server_context, authority.client_context(files))
    assert isinstance(client, ssl.SSLCertVerificationError)
    assert "localhost" in str(client)
