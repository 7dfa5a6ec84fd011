"""One line per way a controller call fails, naming what the operator must fix."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

from agent.diagnosis import cause_text, describe_failure

URL = "https://127.0.0.1:8775"
CA = "/etc/rolecall/ca.pem"


def wrapped(error: BaseException) -> ResponseNeverReceived:
    """As Twisted's HTTP client raises a failed handshake."""
    return ResponseNeverReceived([Failure(error)])


def test_a_controller_certificate_that_does_not_verify_names_the_ca_file() -> None:
    error = wrapped(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    assert describe_failure(URL, error, CA) == (
        "controller https://127.0.0.1:8775: its certificate does not verify against the CA in "
        "/etc/rolecall/ca.pem (certificate verify failed)"
    )


def test_a_controller_refusing_the_node_certificate_says_so() -> None:
    error = wrapped(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]))
    assert describe_failure(URL, error, CA) == (
        "controller https://127.0.0.1:8775: it refused this node's certificate "
        "(tlsv1 alert unknown ca); the node certificate must come from its CA (enroll-node)"
    )


def test_another_tls_failure_gives_openssls_reason_not_a_failure_repr() -> None:
    error = wrapped(SSL.Error([("SSL routines", "", "wrong version number")]))
    assert describe_failure(URL, error, CA) == (
        "controller https://127.0.0.1:8775: TLS handshake failed (wrong version number)"
    )


def test_a_refused_connection_is_unreachable_with_the_reason() -> None:
    line = describe_failure(URL, ConnectionRefusedError("111: Connection refused"), CA)
    assert line.startswith("controller https://127.0.0.1:8775: unreachable (Connection was refused")
    assert "Failure" not in describe_failure(URL, wrapped(ConnectionRefusedError()), CA)


def test_the_cause_of_an_upstream_failure_is_openssls_reason_or_the_innermost_error() -> None:
    tls = wrapped(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    assert cause_text(tls) == "TLS handshake failed: certificate verify failed"
    assert cause_text(wrapped(ConnectionRefusedError())) == "Connection was refused by other side."
