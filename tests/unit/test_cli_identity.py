"""The instance identity key in the state directory: ``init`` makes it once and never replaces
it, ``identity-certificate`` prints the certificate that verifies what it signs (never the key),
and ``load_identity_signer`` reads it as ``serve`` and ``check-config`` do."""

from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from controller.cli import main
from controller.identity import IdentityError, IdentitySigner
from controller.identityfiles import load_identity_signer

KEY = "instance-identity.key"
CERTIFICATE = "instance-identity.pem"
DOCUMENT = b'{\n  "instanceId" : "i-0123456789abcdef0",\n  "region" : "us-east-1"\n}'


def run(state: Path, *arguments: str) -> int:
    return main(["--state-dir", str(state), *arguments])


@pytest.fixture
def state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """An initialised state directory (init's output already read)."""
    directory = tmp_path / "state"
    assert run(directory, "init") == 0
    capsys.readouterr()
    return directory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(state: Path) -> IdentitySigner | None:
    return load_identity_signer(state / KEY, state / CERTIFICATE)


# --- init -------------------------------------------------------------------------------------


def test_init_creates_a_private_identity_key_and_its_certificate_for_the_region(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert run(state, "init") == 0
    out = capsys.readouterr().out
    assert str(state / CERTIFICATE) in out and "identity-certificate" in out
    assert mode(state / KEY) == 0o600
    assert mode(state / CERTIFICATE) & 0o022 == 0
    certificate = x509.load_pem_x509_certificate((state / CERTIFICATE).read_bytes())
    assert "RoleCall instance identity us-east-1" in certificate.subject.rfc4514_string()
    assert load(state) is not None


def test_running_init_again_keeps_the_identity_key_byte_for_byte(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, certificate = (state / KEY).read_bytes(), (state / CERTIFICATE).read_bytes()
    assert run(state, "init") == 0
    assert "nothing was changed" in capsys.readouterr().out
    assert (state / KEY).read_bytes() == key
    assert (state / CERTIFICATE).read_bytes() == certificate


def test_init_adds_an_identity_key_to_a_state_directory_made_before_it_and_keeps_the_rest(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (state / KEY).unlink()
    (state / CERTIFICATE).unlink()
    before = {path.name: path.read_bytes() for path in state.iterdir() if path.is_file()}
    assert run(state, "init") == 0
    assert "added the instance identity key" in capsys.readouterr().out
    after = {path.name: path.read_bytes() for path in state.iterdir() if path.is_file()}
    assert set(after) == set(before) | {KEY, CERTIFICATE}
    assert all(after[name] == data for name, data in before.items())
    assert mode(state / KEY) == 0o600
    assert load(state) is not None


@pytest.mark.parametrize(("kept", "lost"), [(KEY, CERTIFICATE), (CERTIFICATE, KEY)])
def test_init_refuses_half_an_identity_and_keeps_the_half_there_is(
    state: Path, capsys: pytest.CaptureFixture[str], kept: str, lost: str
) -> None:
    data = (state / kept).read_bytes()
    (state / lost).unlink()
    assert run(state, "init") == 1
    err = capsys.readouterr().err
    assert f"{kept} exists but" in err and f"{lost} does not" in err
    assert (state / kept).read_bytes() == data
    assert not (state / lost).exists()


# --- identity-certificate ---------------------------------------------------------------------


def test_identity_certificate_prints_the_certificate_that_verifies_the_signatures(
    state: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(state, "identity-certificate") == 0
    printed = capsys.readouterr().out
    assert printed == (state / CERTIFICATE).read_text()
    signatures = IdentitySigner(
        (state / KEY).read_bytes(), (state / CERTIFICATE).read_bytes()
    ).sign(DOCUMENT)
    public_key = x509.load_pem_x509_certificate(printed.encode()).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    signature = base64.b64decode(signatures.signature.replace("\n", ""))
    public_key.verify(signature, DOCUMENT, padding.PKCS1v15(), hashes.SHA256())
    # And with openssl, from what was printed, as a verifier's operator would.
    (tmp_path / "printed.pem").write_text(printed)
    (tmp_path / "signed.der").write_bytes(base64.b64decode(signatures.pkcs7.replace("\n", "")))
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", tmp_path / "signed.der",
         "-certfile", tmp_path / "printed.pem", "-CAfile", tmp_path / "printed.pem", "-binary"],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == DOCUMENT


def test_identity_certificate_never_prints_the_key(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(state, "identity-certificate") == 0
    shown = capsys.readouterr()
    key_lines = (state / KEY).read_text().splitlines()
    assert "PRIVATE KEY" not in shown.out + shown.err
    assert not any(line in shown.out + shown.err for line in key_lines[1:-1])


def test_identity_certificate_without_an_identity_key_says_to_run_init(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (state / KEY).unlink()
    (state / CERTIFICATE).unlink()
    assert run(state, "identity-certificate") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "has no instance identity key" in captured.err and "init" in captured.err


def test_identity_certificate_refuses_a_certificate_that_is_not_the_keys(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert run(other, "init") == 0
    (state / CERTIFICATE).write_bytes((other / CERTIFICATE).read_bytes())
    capsys.readouterr()
    assert run(state, "identity-certificate") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "does not belong to the identity certificate" in captured.err
    assert str(state / KEY) in captured.err
    assert len(captured.err.splitlines()) == 1


# --- check-config -----------------------------------------------------------------------------


def test_check_config_without_an_identity_key_passes_and_says_what_is_missing(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (state / KEY).unlink()
    (state / CERTIFICATE).unlink()
    assert run(state, "check-config") == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out
    assert f"no instance identity key ({state / KEY})" in out


def test_check_config_fails_on_a_broken_identity_key_naming_the_file(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (state / KEY).write_text("not a key\n")
    assert run(state, "check-config") == 1
    err = capsys.readouterr().err
    assert "not an unencrypted PEM private key" in err and str(state / KEY) in err


# --- load_identity_signer, as serve loads it --------------------------------------------------


def test_a_state_directory_without_identity_files_loads_no_signer(tmp_path: Path) -> None:
    assert load_identity_signer(tmp_path / KEY, tmp_path / CERTIFICATE) is None


def test_the_loaded_signer_signs_with_the_stored_key(state: Path) -> None:
    signer = load(state)
    assert signer is not None
    assert signer.certificate_pem == (state / CERTIFICATE).read_bytes()


def test_a_lone_certificate_is_refused_naming_both_files(state: Path) -> None:
    (state / KEY).unlink()
    with pytest.raises(IdentityError) as refused:
        load(state)
    assert f"{state / CERTIFICATE} exists but {state / KEY} does not" in str(refused.value)


def test_an_unreadable_key_is_refused_naming_it(state: Path) -> None:
    (state / KEY).unlink()
    (state / KEY).mkdir()  # unreadable as a file, even for root
    with pytest.raises(IdentityError, match="cannot read the instance identity file") as refused:
        load(state)
    assert str(state / KEY) in str(refused.value)
