"""What signing instance identity documents costs (issue 12, item 6).

``IdentitySigner.sign`` runs once per instance RunInstances launches, up to 100 in one call, on
the controller's reactor thread. This prints, for a document of AWS's size and layout (about 470
bytes):

- one ``sign`` (two RSA-2048 signatures: the raw one and the SignedData's), and each part alone;
- 100 ``sign`` in a row, what the largest RunInstances adds;
- making an ``IdentitySigner`` from PEM (at start only: loading an RSA key checks it), which is
  what each call would cost if the key were parsed per call.

Milliseconds per call: wall-clock best and median of ``--repeats`` runs, and the median CPU time
of the thread (the steadier figure on a shared machine). No server, a few seconds.

    .venv/bin/python bench/identity_sign.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from controller.identity import IdentitySigner, create_identity_key

DOCUMENT = (
    b'{\n  "accountId" : "111122223333",\n  "architecture" : "x86_64",\n'
    b'  "availabilityZone" : "us-east-1a",\n  "billingProducts" : null,\n'
    b'  "devpayProductCodes" : null,\n  "marketplaceProductCodes" : null,\n'
    b'  "imageId" : "emi-12345678",\n  "instanceId" : "i-0123456789abcdef0",\n'
    b'  "instanceType" : "m1.small",\n  "kernelId" : null,\n'
    b'  "pendingTime" : "2026-12-07T12:00:00Z",\n  "privateIp" : "10.0.0.5",\n'
    b'  "ramdiskId" : null,\n  "region" : "us-east-1",\n  "version" : "2017-09-30"\n}'
)


def _milliseconds(
    call: Callable[[], object], count: int, repeats: int
) -> tuple[float, float, float]:
    """Best and median wall-clock milliseconds per call, and the median of this thread's CPU
    milliseconds per call, over ``repeats`` runs of ``count`` calls. On a shared machine the CPU
    time is the steadier figure: it leaves out the time other processes had the core."""
    call()  # warm
    timings, cpu_timings = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.thread_time()
        for _ in range(count):
            call()
        timings.append((time.perf_counter() - start) / count * 1000)
        cpu_timings.append((time.thread_time() - cpu_start) / count * 1000)
    return min(timings), statistics.median(timings), statistics.median(cpu_timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()

    key_pem, cert_pem = create_identity_key(datetime.now(UTC), "us-east-1")
    signer = IdentitySigner(key_pem, cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    certificate = signer.certificate
    signed_options = [
        pkcs7.PKCS7Options.Binary,
        pkcs7.PKCS7Options.NoCerts,
        pkcs7.PKCS7Options.NoCapabilities,
    ]

    def signed_data() -> bytes:
        return (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(DOCUMENT)
            .add_signer(certificate, key, hashes.SHA256())
            .sign(serialization.Encoding.DER, signed_options)
        )

    rows = [
        ("sign(document)", lambda: signer.sign(DOCUMENT), 200),
        (
            "  the raw RSA signature",
            lambda: key.sign(DOCUMENT, padding.PKCS1v15(), hashes.SHA256()),
            200,
        ),
        ("  the SignedData", signed_data, 200),
        ("100 x sign(document)", lambda: [signer.sign(DOCUMENT) for _ in range(100)], 1),
        ("IdentitySigner(key, certificate)", lambda: IdentitySigner(key_pem, cert_pem), 5),
    ]
    print(
        f"document of {len(DOCUMENT)} bytes; ms per call: wall-clock best and median of"
        f" {options.repeats} runs, median CPU"
    )
    print(f"{'':36} {'best':>8} {'median':>8} {'CPU':>8}")
    for name, call, count in rows:
        best, median, cpu = _milliseconds(call, count, options.repeats)
        print(f"{name:36} {best:8.3f} {median:8.3f} {cpu:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
