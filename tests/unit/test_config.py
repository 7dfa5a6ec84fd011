"""The controller's TOML configuration: defaults, every key, errors that name the key at fault."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from controller import config
from controller.config import ConfigError, ControllerConfig, config_from_string, load_config


def test_empty_text_gives_the_defaults() -> None:
    assert config_from_string("") == ControllerConfig(
        state_dir=Path("/var/lib/rolecall"),
        api_host="127.0.0.1",
        api_port=8773,
        max_body_bytes=1024 * 1024,
        database=None,
    )


def test_metrics_listen_on_loopback_port_9773_by_default() -> None:
    parsed = config_from_string("")
    assert (parsed.metrics_host, parsed.metrics_port) == ("127.0.0.1", 9773)


def test_default_database_is_rolecall_db_in_the_state_directory() -> None:
    assert ControllerConfig().database_path == Path("/var/lib/rolecall/rolecall.db")


def test_default_database_follows_a_configured_state_directory() -> None:
    parsed = config_from_string('state_dir = "/srv/rolecall"')
    assert parsed.database_path == Path("/srv/rolecall/rolecall.db")


def test_configured_database_path_wins_over_the_state_directory() -> None:
    parsed = config_from_string('state_dir = "/srv/rolecall"\n[store]\npath = "/data/rc.db"\n')
    assert parsed.database_path == Path("/data/rc.db")


def test_root_credentials_live_in_the_state_directory() -> None:
    parsed = config_from_string('state_dir = "/srv/rolecall"')
    assert parsed.root_credentials_path == Path("/srv/rolecall/root-credentials")


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ('state_dir = "/srv/rolecall"', "state_dir", Path("/srv/rolecall")),
        ('[api]\nhost = "0.0.0.0"', "api_host", "0.0.0.0"),  # noqa: S104
        ("[api]\nport = 9000", "api_port", 9000),
        ("[api]\nport = 0", "api_port", 0),
        ("[api]\nport = 65535", "api_port", 65535),
        ("[api]\nmax_body_bytes = 2048", "max_body_bytes", 2048),
        ("[api]\nmax_body_bytes = 1024", "max_body_bytes", 1024),
        ("[api]\nmax_body_bytes = 67108864", "max_body_bytes", 67108864),
        ('[store]\npath = "/data/rc.db"', "database", Path("/data/rc.db")),
        ('api.port = 9001\nstore.path = "x.db"', "api_port", 9001),
        ('[metrics]\nhost = "::1"', "metrics_host", "::1"),
        ("[metrics]\nport = 9100", "metrics_port", 9100),
        ("[metrics]\nport = 0", "metrics_port", 0),
    ],
)
def test_key_is_parsed_into_its_field(text: str, field: str, expected: object) -> None:
    assert getattr(config_from_string(text), field) == expected


def test_store_backend_sqlite_is_accepted() -> None:
    assert config_from_string('[store]\nbackend = "sqlite"') == ControllerConfig()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("port = 80", "port"),
        ("[api]\nprot = 80", "api.prot"),
        ('[storage]\npath = "/x"', "storage.path"),
        ("[api.tls]\nenabled = true", "api.tls.enabled"),
        ("api = 5", "api"),
    ],
)
def test_unknown_key_is_refused_naming_it(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key {re.escape(key)} "):
        config_from_string(text)


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ("[api]\nport = 70000", "api.port", "70000"),
        ("[api]\nport = -1", "api.port", "-1"),
        ('[api]\nport = "x"', "api.port", "'x'"),
        ('[api]\nport = "8773"', "api.port", "'8773'"),
        ("[api]\nport = true", "api.port", "True"),
        ("[api]\nport = 80.0", "api.port", "80.0"),
        ('[api]\nhost = ""', "api.host", "''"),
        ("[api]\nhost = 127", "api.host", "127"),
        ("[api]\nmax_body_bytes = 1023", "api.max_body_bytes", "1023"),
        ("[api]\nmax_body_bytes = 67108865", "api.max_body_bytes", "67108865"),
        ("[api]\nmax_body_bytes = false", "api.max_body_bytes", "False"),
        ('state_dir = ""', "state_dir", "''"),
        ("state_dir = 5", "state_dir", "5"),
        ('[store]\npath = ""', "store.path", "''"),
        ('[store]\nbackend = "postgres"', "store.backend", "'postgres'"),
        ('[store]\nbackend = "SQLite"', "store.backend", "'SQLite'"),
        ("[metrics]\nport = 65536", "metrics.port", "65536"),
        ('[metrics]\nhost = ""', "metrics.host", "''"),
    ],
)
def test_bad_value_is_refused_naming_the_key_and_the_value(text: str, key: str, shown: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_string(text)
    assert key in str(raised.value)
    assert shown in str(raised.value)


def test_error_names_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/rc\.toml: api\.port"):
        config_from_string("[api]\nport = 70000", "/etc/rc.toml")


def test_invalid_toml_is_refused_naming_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/rc\.toml: not valid TOML"):
        config_from_string("[api\nport = 1", "/etc/rc.toml")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_configuration_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ControllerConfig().api_port = 1  # type: ignore[misc]


def test_with_overrides_replaces_the_given_fields() -> None:
    overridden = ControllerConfig().with_overrides(api_port=9000, state_dir=Path("/srv"))
    assert (overridden.api_port, overridden.state_dir) == (9000, Path("/srv"))


def test_with_overrides_ignores_none() -> None:
    base = config_from_string("[api]\nport = 9000")
    assert base.with_overrides(api_port=None, api_host=None, database=None) == base


def test_with_overrides_leaves_the_original_unchanged() -> None:
    base = ControllerConfig()
    base.with_overrides(api_port=9000)
    assert base.api_port == 8773


def test_load_config_reads_the_named_file(tmp_path: Path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text('[api]\nhost = "::1"\nport = 9443\n', encoding="utf-8")
    assert load_config(path) == ControllerConfig(api_host="::1", api_port=9443)


def test_load_config_names_the_file_in_value_errors(tmp_path: Path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text("[api]\nport = 70000\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: api\.port"):
        load_config(path)


def test_load_config_of_a_missing_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(path) in str(raised.value)


def test_load_config_without_a_path_reads_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "controller.toml"
    default.write_text("[api]\nport = 9555\n", encoding="utf-8")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", default)
    assert load_config(None).api_port == 9555


def test_load_config_without_a_path_or_default_file_gives_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_config(None) == ControllerConfig()


def test_ec2_limits_default_to_1000_instances_per_account_and_per_node() -> None:
    defaults = config_from_string("")
    assert (defaults.max_instances_per_account, defaults.node_capacity) == (1000, 1000)


def test_ec2_limits_are_read_from_the_ec2_table() -> None:
    parsed = config_from_string("[ec2]\nmax_instances_per_account = 20\nnode_capacity = 7\n")
    assert (parsed.max_instances_per_account, parsed.node_capacity) == (20, 7)


def test_the_key_pair_quota_defaults_to_ec2s_5000_and_is_read_from_the_ec2_table() -> None:
    assert config_from_string("").max_key_pairs_per_account == 5000
    parsed = config_from_string("[ec2]\nmax_key_pairs_per_account = 3\n")
    assert parsed.max_key_pairs_per_account == 3


@pytest.mark.parametrize(
    "text",
    [
        "[ec2]\nmax_key_pairs_per_account = 0",
        "[ec2]\nmax_instances_per_account = 0",
        "[ec2]\nmax_instances_per_account = true",
        "[ec2]\nnode_capacity = -1",
        "[ec2]\nnode_capacity = 100001",
        '[ec2]\nnode_capacity = "10"',
    ],
)
def test_ec2_limits_out_of_range_are_refused_naming_the_key(text: str) -> None:
    key = text.split("\n")[1].split(" ")[0]
    with pytest.raises(ConfigError, match=rf"ec2\.{key}: must be a number from 1 to"):
        config_from_string(text)


def test_a_postgresql_store_takes_a_dsn_and_a_pool_size() -> None:
    parsed = config_from_string(
        '[store]\nbackend = "postgresql"\ndsn = "host=db1,db2 dbname=rc user=rc'
        ' target_session_attrs=read-write"\npool_size = 8'
    )
    assert (parsed.store_backend, parsed.store_pool_size) == ("postgresql", 8)
    assert parsed.store_dsn == "host=db1,db2 dbname=rc user=rc target_session_attrs=read-write"
    assert config_from_string("").store_backend == "sqlite"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[store]\nbackend = "postgresql"',
            'store.dsn: required with store.backend = "postgresql"',
        ),
        (
            '[store]\nbackend = "postgresql"\ndsn = "host=db"\npath = "/x.db"',
            "store.path: not used with store.backend",
        ),
        ('[store]\ndsn = "host=db"', 'store.dsn: only for store.backend = "postgresql"'),
        ("[store]\npool_size = 4", 'store.pool_size: only for store.backend = "postgresql"'),
        ('[store]\nbackend = "postgresql"\ndsn = ""', "store.dsn: must be a libpq connection"),
        (
            '[store]\nbackend = "postgresql"\ndsn = "host=db"\npool_size = 0',
            "store.pool_size",
        ),
    ],
)
def test_store_keys_that_do_not_fit_together_are_refused_naming_the_key(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_string(text)


def test_a_dsn_password_shows_neither_in_an_error_nor_in_the_configurations_repr() -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_string(
            '[store]\nbackend = "postgresql"\ndsn = "host=db password=s3cr3t s3cr3t"'
        )
    assert "store.dsn" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)
    parsed = config_from_string(
        '[store]\nbackend = "postgresql"\ndsn = "postgresql://rc:s3cr3t@db/rc"'
    )
    assert "s3cr3t" not in repr(parsed)


READ_ONLY = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}'
)


def test_aws_managed_policies_are_read_from_the_configured_directory(tmp_path: Path) -> None:
    (tmp_path / "service-role").mkdir()
    (tmp_path / "ReadOnly.json").write_text(READ_ONLY)
    (tmp_path / "service-role" / "Ec2Role.json").write_text(READ_ONLY)
    loaded = config.load_aws_managed_policies(
        config_from_string(f'[iam]\naws_managed_policies = "{tmp_path}"')
    )
    assert [policy.arn for policy in loaded.all()] == [
        "arn:aws:iam::aws:policy/service-role/Ec2Role",
        "arn:aws:iam::aws:policy/ReadOnly",
    ]
    assert len(config.load_aws_managed_policies(ControllerConfig())) == 0


@pytest.mark.parametrize(
    ("make", "shown"),
    [
        (lambda directory: None, "is not a directory"),
        (
            lambda directory: (directory.mkdir(), (directory / "Bad.json").write_text("{")),
            "Bad.json",
        ),
        (
            lambda directory: (
                directory.mkdir(),
                (directory / "bad name.json").write_text(READ_ONLY),
            ),
            "bad name.json",
        ),
    ],
)
def test_a_bad_aws_managed_policies_directory_is_a_config_error_naming_the_key(
    tmp_path: Path, make: object, shown: str
) -> None:
    directory = tmp_path / "policies"
    make(directory)  # type: ignore[operator]
    chosen = config_from_string(f'[iam]\naws_managed_policies = "{directory}"')
    with pytest.raises(ConfigError, match=r"^iam\.aws_managed_policies: .*" + re.escape(shown)):
        config.load_aws_managed_policies(chosen)
