"""SSH keys for EC2 key pairs (controller/ec2/sshkeys.py): what ImportKeyPair takes and refuses,
what CreateKeyPair makes, and fingerprints checked against OpenSSH's own ssh-keygen rather than
against the code that computes them."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from controller.ec2 import sshkeys
from controller.ec2.sshkeys import KeyFormatError


def ssh_keygen(*arguments: str | Path) -> str:
    return subprocess.run(
        ["ssh-keygen", *map(str, arguments)], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Key files made by ssh-keygen: rsa2048, rsa3072, rsa4096, rsa1024, ed25519, ecdsa, and the
    RFC 4716 form of rsa3072 and ed25519."""
    directory = tmp_path_factory.mktemp("keys")
    for name, kind in [
        ("rsa2048", ["-t", "rsa", "-b", "2048"]),
        ("rsa3072", ["-t", "rsa", "-b", "3072"]),
        ("rsa4096", ["-t", "rsa", "-b", "4096"]),
        ("rsa1024", ["-t", "rsa", "-b", "1024"]),
        ("ed25519", ["-t", "ed25519"]),
        ("ecdsa", ["-t", "ecdsa"]),
    ]:
        ssh_keygen(*kind, "-q", "-N", "", "-C", f"someone@{name}", "-f", directory / name)
    for name in ("rsa3072", "ed25519"):
        (directory / f"{name}.rfc4716").write_text(
            ssh_keygen("-e", "-f", directory / f"{name}.pub")
        )
    return directory


def spki_md5(keys: Path, name: str) -> str:
    """EC2's documented check of an imported RSA key: the key as PKCS#8 (SubjectPublicKeyInfo)
    by ssh-keygen, its DER hashed with MD5."""
    pem = ssh_keygen("-e", "-m", "PKCS8", "-f", keys / f"{name}.pub")
    der = base64.b64decode("".join(pem.splitlines()[1:-1]))
    return ":".join(f"{byte:02x}" for byte in hashlib.md5(der, usedforsecurity=False).digest())


def ssh_keygen_sha256(path: Path) -> str:
    """The SHA256:… fingerprint ssh-keygen -l prints, as EC2 shows it: no prefix, padded."""
    digest = ssh_keygen("-l", "-f", path).split()[1].removeprefix("SHA256:")
    return digest + "=" * (-len(digest) % 4)


# What ImportKeyPair takes


@pytest.mark.parametrize("name", ["rsa2048", "rsa3072", "rsa4096"])
def test_an_imported_rsa_keys_fingerprint_is_md5_of_its_der_public_key(
    keys: Path, name: str
) -> None:
    public = sshkeys.parse_public_key((keys / f"{name}.pub").read_bytes())
    assert (public.key_type, public.bits) == ("rsa", int(name[3:]))
    assert sshkeys.import_fingerprint(public) == spki_md5(keys, name)


def test_an_imported_rsa_keys_fingerprint_is_not_ssh_keygens_md5_of_the_ssh_blob(
    keys: Path,
) -> None:
    """The trap EC2's documentation sets: it cites RFC 4716 (the SSH blob, what ssh-keygen -E md5
    prints), but its answers are the DER SubjectPublicKeyInfo's MD5."""
    public = sshkeys.parse_public_key((keys / "rsa2048.pub").read_bytes())
    blob_md5 = ssh_keygen("-l", "-E", "md5", "-f", keys / "rsa2048.pub").split()[1]
    assert sshkeys.import_fingerprint(public) != blob_md5.removeprefix("MD5:")


def test_an_ed25519_keys_fingerprint_is_what_ssh_keygen_shows_padded(keys: Path) -> None:
    public = sshkeys.parse_public_key((keys / "ed25519.pub").read_bytes())
    assert (public.key_type, public.bits) == ("ed25519", 256)
    assert sshkeys.import_fingerprint(public) == ssh_keygen_sha256(keys / "ed25519.pub")


@pytest.mark.parametrize("name", ["rsa3072", "ed25519"])
def test_an_rfc4716_key_is_the_same_key_as_its_openssh_line(keys: Path, name: str) -> None:
    line = sshkeys.parse_public_key((keys / f"{name}.pub").read_bytes())
    converted = sshkeys.parse_public_key((keys / f"{name}.rfc4716").read_bytes())
    assert converted.blob == line.blob
    assert sshkeys.import_fingerprint(converted) == sshkeys.import_fingerprint(line)


def test_base64_of_a_der_rsa_public_key_is_taken(keys: Path) -> None:
    line = sshkeys.parse_public_key((keys / "rsa2048.pub").read_bytes())
    pem = ssh_keygen("-e", "-m", "PKCS8", "-f", keys / "rsa2048.pub")
    der_base64 = "".join(pem.splitlines()[1:-1]).encode()
    assert sshkeys.parse_public_key(der_base64).blob == line.blob


def test_the_stored_line_keeps_the_key_and_puts_the_key_pairs_name_as_comment(
    keys: Path,
) -> None:
    text = (keys / "ed25519.pub").read_text()
    public = sshkeys.parse_public_key(text.encode())
    kind, body, _comment = text.split()
    assert public.openssh_line("deploy key") == f"{kind} {body} deploy key"


def test_surrounding_whitespace_and_a_final_newline_are_ignored(keys: Path) -> None:
    text = (keys / "ed25519.pub").read_bytes()
    assert sshkeys.parse_public_key(b"\n  " + text + b"\n\n").blob == (
        sshkeys.parse_public_key(text).blob
    )


# What ImportKeyPair refuses, each with a reason


@pytest.mark.parametrize(
    ("material", "reason"),
    [
        (b"", "empty"),
        (b"garbage", "expected an OpenSSH public key"),
        (b"ssh-rsa", "TYPE BASE64"),
        (b"ssh-rsa AAAAB3NzaC1yc2E", "does not decode"),
        (b"ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ== x", "does not decode"),
        (b"ssh-dss AAAAB3NzaC1kc3MAAACBAJ0aXctVwbN6VB81gpo8R7DUk8zXRjZvrkg8Y8vEGt63gkl", "ssh-dss"),
        (b"\xff\xfe", "not ASCII"),
        (b"---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n", "ends with"),
        (b"x" * (sshkeys.MAX_MATERIAL_BYTES + 1), "longer than any supported key"),
    ],
)
def test_material_that_is_no_supported_key_is_refused_saying_why(
    material: bytes, reason: str
) -> None:
    with pytest.raises(KeyFormatError, match=reason):
        sshkeys.parse_public_key(material)


def test_two_keys_in_one_import_are_refused(keys: Path) -> None:
    text = (keys / "ed25519.pub").read_bytes()
    with pytest.raises(KeyFormatError, match="more than one line"):
        sshkeys.parse_public_key(text + text)


def test_an_rsa_key_under_2048_bits_is_refused(keys: Path) -> None:
    with pytest.raises(KeyFormatError, match="1024 bits; RoleCall takes 2048 to 4096"):
        sshkeys.parse_public_key((keys / "rsa1024.pub").read_bytes())


def test_an_rsa_key_over_4096_bits_is_refused() -> None:
    big = rsa.generate_private_key(65537, 4160).public_key()
    line = big.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with pytest.raises(KeyFormatError, match="4160 bits"):
        sshkeys.parse_public_key(line)


def test_an_ecdsa_key_is_refused_naming_its_type(keys: Path) -> None:
    with pytest.raises(KeyFormatError, match="ecdsa-sha2-nistp256 keys are not supported"):
        sshkeys.parse_public_key((keys / "ecdsa.pub").read_bytes())


def test_material_that_is_not_base64_on_the_wire_is_refused_pointing_at_fileb() -> None:
    with pytest.raises(KeyFormatError, match="fileb://"):
        sshkeys.decode_material("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me@host")


@given(st.binary(max_size=600))
def test_no_material_raises_anything_but_a_key_format_error(material: bytes) -> None:
    try:
        sshkeys.parse_public_key(material)
    except KeyFormatError:
        pass


@given(st.text(max_size=300))
def test_no_openssh_looking_text_raises_anything_but_a_key_format_error(tail: str) -> None:
    for prefix in ("ssh-rsa ", "ssh-ed25519 ", "---- BEGIN SSH2 PUBLIC KEY ----\n"):
        try:
            sshkeys.parse_public_key((prefix + tail).encode("utf-8", "replace")[:2000])
        except KeyFormatError:
            pass


# What CreateKeyPair makes


def test_a_created_rsa_key_is_2048_bit_pkcs1_pem_with_sha1_of_its_pkcs8_as_fingerprint(
    tmp_path: Path,
) -> None:
    made = sshkeys.generate("rsa")
    assert made.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(made.private_key.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    # ssh-keygen converts the key to PKCS#8 in place: EC2's documented fingerprint check.
    path = tmp_path / "created.pem"
    path.write_text(made.private_key)
    path.chmod(0o600)
    ssh_keygen("-p", "-q", "-P", "", "-N", "", "-m", "PKCS8", "-f", path)
    pkcs8 = path.read_text()
    assert pkcs8.startswith("-----BEGIN PRIVATE KEY-----")
    der = base64.b64decode("".join(pkcs8.splitlines()[1:-1]))
    assert made.fingerprint == ":".join(
        f"{b:02x}" for b in hashlib.sha1(der, usedforsecurity=False).digest()
    )


def test_a_created_ed25519_key_is_an_openssh_private_key_with_ssh_keygens_fingerprint(
    tmp_path: Path,
) -> None:
    made = sshkeys.generate("ed25519")
    assert made.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    path = tmp_path / "created"
    path.write_text(made.private_key)
    path.chmod(0o600)
    assert made.fingerprint == ssh_keygen_sha256(path)
    derived = ssh_keygen("-y", "-f", path).split()
    assert made.public.openssh_line("k").split()[:2] == derived[:2]


@pytest.mark.parametrize("key_type", sshkeys.KEY_TYPES)
def test_a_created_private_key_matches_its_public_key(key_type: str) -> None:
    made = sshkeys.generate(key_type)
    loaded = (
        serialization.load_ssh_private_key(made.private_key.encode(), password=None)
        if key_type == "ed25519"
        else serialization.load_pem_private_key(made.private_key.encode(), password=None)
    )
    assert isinstance(loaded, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey)
    assert sshkeys.PublicKey(loaded.public_key()).blob == made.public.blob


def test_each_created_key_pair_is_new() -> None:
    assert sshkeys.generate("ed25519").public.blob != sshkeys.generate("ed25519").public.blob


def test_a_created_key_pairs_repr_never_shows_the_private_key() -> None:
    made = sshkeys.generate("ed25519")
    body = made.private_key.splitlines()[1]
    assert body not in repr(made) and "PRIVATE" not in repr(made)
