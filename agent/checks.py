"""What the agent's root process checks before it trusts its files: the configuration, the node's
certificate and CA, and its key must be changeable by root alone, and the key readable by root
alone. A file another user can replace (itself, or through its directory) could point the agent
at another controller, or hand it another key. Also `--check-config`: everything the agent needs
to start, checked without starting it (for ExecStartPre= and before an upgrade).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from agent.config import AgentConfig, ConfigError


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _check_changeable_by_root_only(path: Path, what: str, status: os.stat_result) -> None:
    trusted = {0, os.geteuid()}
    if status.st_uid not in trusted:
        raise ConfigError(
            f"{what} {path} belongs to {_owner(status.st_uid)}: only root may be able to change"
            f" it (chown root {path})"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        raise ConfigError(
            f"{what} {path} can be changed by group or others (mode {mode:04o}): chmod go-w {path}"
        )


def check_private_file(path: Path, what: str, *, secret: bool = False) -> None:
    """``path`` is a regular file that root alone may change, in a directory root alone may
    change; with ``secret``, root alone may read it. ConfigError says what to fix."""
    try:
        status = path.stat()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    _check_changeable_by_root_only(path, what, status)
    directory = path.resolve().parent
    _check_changeable_by_root_only(directory, f"the directory of {what}", directory.stat())
    mode = stat.S_IMODE(status.st_mode)
    if secret and mode & 0o077:
        raise ConfigError(
            f"{what} {path} can be read by group or others (mode {mode:04o}): chmod 600 {path}"
        )


#: The most a shared secret file may hold (a secret is tens of bytes).
MAX_SECRET_BYTES = 4096
#: How errors name the upstream metadata service's secret file.
UPSTREAM_SHARED_FILE = (
    "the upstream metadata service's shared secret (imds.upstream.shared_secret_file)"
)


def check_files(config: AgentConfig, config_file: Path | None) -> None:
    """Every file the agent trusts, as `check_private_file` requires."""
    if config_file is not None:
        check_private_file(config_file, "the configuration file")
    check_private_file(config.certificate, "the node's certificate (controller.certificate)")
    check_private_file(config.ca_certificate, "the controller's CA (controller.ca_certificate)")
    check_private_file(config.key, "the node's key (controller.key)", secret=True)
    if config.upstream_shared_secret_file is not None:
        check_private_file(config.upstream_shared_secret_file, UPSTREAM_SHARED_FILE, secret=True)


def read_secret(path: Path, what: str) -> bytes:
    """The secret in ``path``: its bytes without surrounding white space (a final newline, as
    editors and ``echo`` leave one). ConfigError if it cannot be read, is empty or is larger
    than a secret; the message never shows any of its bytes."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SECRET_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"{what} {path} is over {MAX_SECRET_BYTES} bytes: not a secret")
    secret = data.strip()
    if not secret:
        raise ConfigError(f"{what} {path} is empty")
    return secret


def check_configuration(config: AgentConfig, config_file: Path | None) -> str:
    """Everything the agent needs to start, checked without starting it; a one-line summary.
    ConfigError names the first problem."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    from agent.privileged import serving_user

    if not config.controller_urls:
        raise ConfigError("controller.urls: at least one node API URL is needed")
    check_files(config, config_file)
    try:
        certificate = x509.load_pem_x509_certificate(config.certificate.read_bytes())
        x509.load_pem_x509_certificates(config.ca_certificate.read_bytes())
        key = load_pem_private_key(config.key.read_bytes(), password=None)
    except ValueError as error:
        raise ConfigError(f"the node's certificate, key or CA is not valid PEM: {error}") from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise ConfigError(
            f"the node's key {config.key} is not the key of its certificate {config.certificate}"
        )
    serving_user(config.user)
    upstream = ""
    if config.upstream_shared_secret_file is not None:
        read_secret(config.upstream_shared_secret_file, UPSTREAM_SHARED_FILE)
        upstream = f", metadata pass-through to {config.upstream_url}"
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    node = str(names[0].value) if names else certificate.subject.rfc4514_string()
    return (
        f"configuration OK: {len(config.controller_urls)} controller URL(s), node {node},"
        f" serving user {config.user}{upstream}"
    )
