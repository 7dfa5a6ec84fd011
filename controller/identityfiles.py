"""The instance identity key pair in the state directory, read for ``serve``, ``check-config``
and ``identity-certificate`` alike (``init`` writes it: ``controller.cli``).

Kept apart from ``controller.compose`` so that the commands need not import Twisted to read it.
"""

from __future__ import annotations

from pathlib import Path

from controller.identity import IdentityError, IdentitySigner


def load_identity_signer(key_path: Path, cert_path: Path) -> IdentitySigner | None:
    """The instance identity signer from its key and certificate files, or None when neither
    exists (a state directory from before signed identities: ``init`` adds them).

    Anything else that keeps them from signing is IdentityError naming the file: one of the two
    missing, a file that cannot be read, a key and certificate that are no pair. Verifiers have
    pinned that certificate, so serving on without it would fail them all at once, later.
    """
    have_key, have_cert = key_path.exists(), cert_path.exists()
    if not have_key and not have_cert:
        return None
    if not have_key or not have_cert:
        present, missing = (key_path, cert_path) if have_key else (cert_path, key_path)
        raise IdentityError(
            f"the instance identity: {present} exists but {missing} does not; restore"
            f" {missing}, or remove {present} and run rolecall-controller init to make a new"
            " key (verifiers must then be given its certificate)"
        )
    try:
        key_pem = key_path.read_bytes()
        cert_pem = cert_path.read_bytes()
    except OSError as error:
        raise IdentityError(
            f"cannot read the instance identity file {error.filename}: {error.strerror}"
        ) from None
    try:
        return IdentitySigner(key_pem, cert_pem)
    except IdentityError as error:
        raise IdentityError(f"{error} ({key_path}, {cert_path})") from None
