"""The agent's files must be root's to change (and its key root's to read), and
``rolecall-agent --check-config`` says whether the agent would start, without starting it
(issue 17, items 3 and 4)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.checks import check_configuration, check_files, check_private_file, read_secret
from agent.cli import main
from agent.config import AgentConfig, ConfigError
from controller.cli import main as controller_main

NOBODY = 65534


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node's certificate, key and CA, as `enroll-node` writes them."""
    base = tmp_path_factory.mktemp("enrolled")
    assert controller_main(["--state-dir", str(base / "state"), "init"]) == 0
    out = base / "node"
    assert (
        controller_main(
            ["--state-dir", str(base / "state"), "enroll-node", "hv-1", "--out", str(out)]
        )
        == 0
    )
    return out


@pytest.fixture
def node(tmp_path: Path, enrolled: Path) -> Iterator[Path]:
    """A copy of the node's files, with an agent.toml, in a directory of root's."""
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o755)
    for name in ("node.pem", "node.key", "ca.pem"):
        shutil.copy2(enrolled / name, directory / name)
    (directory / "agent.toml").write_text(
        f'user = "nobody"\n[controller]\nurls = ["https://127.0.0.1:8775"]\n'
        f'certificate = "{directory / "node.pem"}"\nkey = "{directory / "node.key"}"\n'
        f'ca_certificate = "{directory / "ca.pem"}"\n'
    )
    yield directory


def config_of(directory: Path) -> AgentConfig:
    return AgentConfig(
        controller_urls=("https://127.0.0.1:8775",),
        certificate=directory / "node.pem",
        key=directory / "node.key",
        ca_certificate=directory / "ca.pem",
        user="nobody",
    )


def test_files_as_enroll_node_writes_them_are_accepted(node: Path) -> None:
    check_files(config_of(node), node / "agent.toml")
    assert "configuration OK" in check_configuration(config_of(node), node / "agent.toml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: os.chown(d / "agent.toml", NOBODY, NOBODY), "belongs to nobody"),
        (lambda d: (d / "agent.toml").chmod(0o666), "can be changed by group or others"),
        (lambda d: (d / "ca.pem").chmod(0o664), "can be changed by group or others"),
        (lambda d: os.chown(d / "node.pem", NOBODY, NOBODY), "belongs to nobody"),
        (lambda d: (d / "node.key").chmod(0o640), "can be read by group or others"),
        (lambda d: os.chown(d, NOBODY, NOBODY), "the directory of .* belongs to nobody"),
        (lambda d: d.chmod(0o777), "the directory of .* can be changed by group or others"),
    ],
    ids=["config owner", "config mode", "CA mode", "cert owner", "key mode", "dir owner", "dir"],
)
def test_a_file_another_user_could_change_or_read_is_refused(
    node: Path, change: object, message: str
) -> None:
    change(node)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message):
        check_files(config_of(node), node / "agent.toml")


def test_the_agent_refuses_to_start_with_such_a_file_in_one_line(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (node / "node.key").chmod(0o644)
    assert main(["--config", str(node / "agent.toml")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"the node's key (controller.key) {node / 'node.key'} can be read by group" in error
    assert f"chmod 600 {node / 'node.key'}" in error


def test_check_config_says_ok_and_starts_nothing(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(node / "agent.toml"), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rolecall-agent: configuration OK: 1 controller URL(s), node hv-1,")
    assert "serving user nobody" in out


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('colour = "blue"\n', "unknown key colour"),
        ('user = "no-such-user-here"\n', "there is no user 'no-such-user-here'"),
        ('user = "root"\n', "a system user other than root"),
    ],
)
def test_check_config_names_what_would_stop_the_agent(
    node: Path, capsys: pytest.CaptureFixture[str], setting: str, message: str
) -> None:
    config = node / "agent.toml"
    config.write_text(setting + config.read_text().replace('user = "nobody"\n', ""))
    assert main(["--config", str(config), "--check-config"]) == 1
    assert message in capsys.readouterr().err


def test_check_config_refuses_a_key_that_is_not_the_certificates(
    node: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert controller_main(["--state-dir", str(other), "init"]) == 0
    assert (
        controller_main(
            ["--state-dir", str(other), "enroll-node", "hv-2", "--out", str(tmp_path / "hv-2")]
        )
        == 0
    )
    shutil.copy2(tmp_path / "hv-2" / "node.key", node / "node.key")
    assert main(["--config", str(node / "agent.toml"), "--check-config"]) == 1
    assert "is not the key of its certificate" in capsys.readouterr().err


def test_a_missing_file_is_named(node: Path) -> None:
    (node / "ca.pem").unlink()
    with pytest.raises(ConfigError, match=r"cannot read the controller's CA .*ca\.pem"):
        check_private_file(node / "ca.pem", "the controller's CA (controller.ca_certificate)")


# -- the upstream metadata service's shared secret (imds.upstream.shared_secret_file) ----------

SHARED_SECRET = "a-secret-nova-also-knows"


@pytest.fixture
def with_upstream(node: Path) -> Path:
    """The node's files with pass-through configured, its secret file 0600 root's."""
    secret = node / "metadata-proxy.secret"
    secret.write_text(SHARED_SECRET + "\n")
    secret.chmod(0o600)
    config = node / "agent.toml"
    config.write_text(
        config.read_text()
        + f'[imds.upstream]\nurl = "http://127.0.0.1:8775"\nshared_secret_file = "{secret}"\n'
    )
    return secret


def upstream_config(node: Path, secret: Path) -> AgentConfig:
    return dataclasses.replace(
        config_of(node), upstream_url="http://127.0.0.1:8775", upstream_shared_secret_file=secret
    )


def test_the_shared_secret_is_read_without_its_final_newline(with_upstream: Path) -> None:
    assert read_secret(with_upstream, "the secret") == SHARED_SECRET.encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.chmod(0o640), "can be read by group or others .* chmod 600"),
        (lambda f: f.chmod(0o604), "can be read by group or others"),
        (lambda f: os.chown(f, NOBODY, NOBODY), "belongs to nobody"),
        (lambda f: f.unlink(), "No such file"),
    ],
    ids=["group-readable", "world-readable", "nobody's", "missing"],
)
def test_a_shared_secret_file_others_could_read_or_change_is_refused(
    node: Path, with_upstream: Path, change: object, message: str
) -> None:
    change(with_upstream)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=r"imds\.upstream\.shared_secret_file\) .*" + message):
        check_files(upstream_config(node, with_upstream), node / "agent.toml")


@pytest.mark.parametrize(
    ("content", "message"), [(b"", "is empty"), (b" \n\n", "is empty"), (b"x" * 4097, "over 4096")]
)
def test_an_empty_or_huge_secret_is_refused_without_showing_it(
    with_upstream: Path, content: bytes, message: str
) -> None:
    with_upstream.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as raised:
        read_secret(with_upstream, "the secret")
    assert "xxxx" not in str(raised.value)


def test_check_config_reads_the_secret_and_names_the_upstream_never_the_secret(
    node: Path, with_upstream: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(node / "agent.toml"), "--check-config"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("metadata pass-through to http://127.0.0.1:8775")
    assert SHARED_SECRET not in out
    with_upstream.write_text("\n")
    assert main(["--config", str(node / "agent.toml"), "--check-config"]) == 1
    error = capsys.readouterr().err
    assert "imds.upstream.shared_secret_file" in error and "is empty" in error


def test_the_agent_refuses_to_start_with_a_readable_secret_in_one_line(
    node: Path, with_upstream: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_upstream.chmod(0o644)
    assert main(["--config", str(node / "agent.toml")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"chmod 600 {with_upstream}" in error
    assert SHARED_SECRET not in error
