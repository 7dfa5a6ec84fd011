"""The agent's TOML configuration: defaults, every key, errors that name the key at fault."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from agent import config
from agent.config import (
    AgentConfig,
    ConfigError,
    agent_config_from_string,
    config_from_wire,
    config_to_wire,
    load_agent_config,
)
from agent.imds.passthrough import NEUTRON, HeaderScheme
from agent.refresh import RefreshPolicy

URLS = '[controller]\nurls = ["https://controller.example:8775"]\n'


def test_only_the_controller_urls_are_required_everything_else_has_a_default() -> None:
    assert agent_config_from_string(URLS) == AgentConfig(
        controller_urls=("https://controller.example:8775",),
        certificate=Path("/etc/rolecall/node.pem"),
        key=Path("/etc/rolecall/node.key"),
        ca_certificate=Path("/etc/rolecall/ca.pem"),
        long_poll_seconds=60,
        metrics_host="127.0.0.1",
        metrics_port=9774,
        refresh_fraction=0.5,
        min_remaining_seconds=1800,
        max_concurrent_fetches=8,
        strict_proxy=True,
        rate_per_second=50.0,
        burst=200,
        imds_port=80,
        namespace_prefix="rc-",
    )


def test_the_default_configuration_file_is_in_etc_rolecall() -> None:
    assert Path("/etc/rolecall/agent.toml") == config.DEFAULT_CONFIG_PATH


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        (
            'urls = ["https://a.example:8775", "https://b.example:8775/"]',
            "controller_urls",
            ("https://a.example:8775", "https://b.example:8775"),
        ),
        ('urls = ["https://[fd00::1]:8775"]', "controller_urls", ("https://[fd00::1]:8775",)),
        (
            'urls = ["https://lb.example/rolecall"]',
            "controller_urls",
            ("https://lb.example/rolecall",),
        ),
        ('certificate = "/srv/node.pem"', "certificate", Path("/srv/node.pem")),
        ('key = "/srv/node.key"', "key", Path("/srv/node.key")),
        ('ca_certificate = "/srv/ca.pem"', "ca_certificate", Path("/srv/ca.pem")),
        ("long_poll_seconds = 1", "long_poll_seconds", 1),
        ("long_poll_seconds = 300", "long_poll_seconds", 300),
        ('[metrics]\nhost = "::1"', "metrics_host", "::1"),
        ("[metrics]\nport = 19774", "metrics_port", 19774),
        ("[metrics]\nport = 0", "metrics_port", 0),
        ("[credentials]\nrefresh_fraction = 0.6", "refresh_fraction", 0.6),
        ("[credentials]\nrefresh_fraction = 0.2", "refresh_fraction", 0.2),
        ("[credentials]\nrefresh_fraction = 0.8", "refresh_fraction", 0.8),
        ("[credentials]\nmin_remaining_seconds = 60", "min_remaining_seconds", 60),
        ("[credentials]\nmin_remaining_seconds = 21600", "min_remaining_seconds", 21600),
        ("[credentials]\nmax_concurrent_fetches = 1", "max_concurrent_fetches", 1),
        ("[credentials]\nmax_concurrent_fetches = 256", "max_concurrent_fetches", 256),
        ("[imds]\nstrict_proxy = false", "strict_proxy", False),
        ("[imds]\nrate_per_second = 20", "rate_per_second", 20.0),
        ("[imds]\nrate_per_second = 0.5", "rate_per_second", 0.5),
        ("[imds]\nburst = 1", "burst", 1),
        ("[imds]\nport = 8080", "imds_port", 8080),
        ('[namespaces]\nprefix = "rolecall_"', "namespace_prefix", "rolecall_"),
        ('[namespaces]\nprefix = "x"', "namespace_prefix", "x"),
    ],
)
def test_key_is_parsed_into_its_field(text: str, field: str, expected: object) -> None:
    # Keys without a table follow URLS, so they belong to [controller].
    source = f"[controller]\n{text}\n" if text.startswith("urls") else f"{URLS}{text}\n"
    assert getattr(agent_config_from_string(source), field) == expected


def test_dotted_keys_work_like_tables() -> None:
    parsed = agent_config_from_string(
        'controller.urls = ["https://c.example"]\nmetrics.port = 9000\nimds.port = 8080\n'
    )
    assert (parsed.controller_urls, parsed.metrics_port, parsed.imds_port) == (
        ("https://c.example",),
        9000,
        8080,
    )


def test_missing_controller_urls_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: controller\.urls: required"):
        agent_config_from_string("[metrics]\nport = 9774\n")


def test_empty_text_is_refused_for_want_of_controller_urls() -> None:
    with pytest.raises(ConfigError, match=r"controller\.urls: required"):
        agent_config_from_string("")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("port = 80", "port"),
        ("controller.url = []", "controller.url"),
        ("[metrics]\nprot = 80", "metrics.prot"),
        ("[imds]\nhop_limit = 1", "imds.hop_limit"),
        ("[namespace]\nprefix = 'rc-'", "namespace.prefix"),
        ("[credentials.refresh]\nfraction = 0.5", "credentials.refresh.fraction"),
        ("imds = 5", "imds"),
    ],
)
def test_unknown_key_is_refused_naming_it(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key {re.escape(key)} "):
        agent_config_from_string(f"{URLS}{text}\n" if text.startswith("[") else text)


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ("urls = []", "controller.urls", "[]"),
        ('urls = "https://c.example"', "controller.urls", "'https://c.example'"),
        ('urls = ["http://c.example:8775"]', "controller.urls", "'http://c.example:8775'"),
        ('urls = ["c.example:8775"]', "controller.urls", "'c.example:8775'"),
        ('urls = ["https://"]', "controller.urls", "'https://'"),
        ('urls = ["https://c.example:99999"]', "controller.urls", "'https://c.example:99999'"),
        ('urls = ["https://c.example:port"]', "controller.urls", "'https://c.example:port'"),
        ('urls = ["https://user:pw@c.example"]', "controller.urls", "'https://user:pw@c.example'"),
        ('urls = ["https://c.example/?a=1"]', "controller.urls", "'https://c.example/?a=1'"),
        ('urls = ["https://c.example/#x"]', "controller.urls", "'https://c.example/#x'"),
        ('urls = ["https://c.example /"]', "controller.urls", "'https://c.example /'"),
        ('urls = [""]', "controller.urls", "''"),
        ("urls = [5]", "controller.urls", "5"),
        (
            'urls = ["https://c.example", "https://c.example/"]',
            "controller.urls",
            "twice",
        ),
        ('urls = ["https://c"]\ncertificate = ""', "controller.certificate", "''"),
        ('urls = ["https://c"]\nkey = 5', "controller.key", "5"),
        ('urls = ["https://c"]\nca_certificate = false', "controller.ca_certificate", "False"),
        ('urls = ["https://c"]\nlong_poll_seconds = 0', "controller.long_poll_seconds", "0"),
        ('urls = ["https://c"]\nlong_poll_seconds = 301', "controller.long_poll_seconds", "301"),
        ('urls = ["https://c"]\nlong_poll_seconds = 6.5', "controller.long_poll_seconds", "6.5"),
        ('urls = ["https://c"]\nlong_poll_seconds = true', "controller.long_poll_seconds", "True"),
    ],
)
def test_bad_controller_value_is_refused_naming_the_key_and_the_value(
    text: str, key: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        agent_config_from_string(f"[controller]\n{text}\n")
    assert f"<config>: {key}: " in str(raised.value)
    assert shown in str(raised.value)


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ('[metrics]\nhost = ""', "metrics.host", "''"),
        ("[metrics]\nhost = 127", "metrics.host", "127"),
        ("[metrics]\nport = 65536", "metrics.port", "65536"),
        ("[metrics]\nport = -1", "metrics.port", "-1"),
        ('[metrics]\nport = "9774"', "metrics.port", "'9774'"),
        ("[credentials]\nrefresh_fraction = 0.19", "credentials.refresh_fraction", "0.19"),
        ("[credentials]\nrefresh_fraction = 0.81", "credentials.refresh_fraction", "0.81"),
        ("[credentials]\nrefresh_fraction = 1", "credentials.refresh_fraction", "1"),
        ("[credentials]\nrefresh_fraction = true", "credentials.refresh_fraction", "True"),
        ('[credentials]\nrefresh_fraction = "0.5"', "credentials.refresh_fraction", "'0.5'"),
        ("[credentials]\nmin_remaining_seconds = 59", "credentials.min_remaining_seconds", "59"),
        (
            "[credentials]\nmin_remaining_seconds = 21601",
            "credentials.min_remaining_seconds",
            "21601",
        ),
        (
            "[credentials]\nmin_remaining_seconds = 1800.0",
            "credentials.min_remaining_seconds",
            "1800.0",
        ),
        ("[credentials]\nmax_concurrent_fetches = 0", "credentials.max_concurrent_fetches", "0"),
        (
            "[credentials]\nmax_concurrent_fetches = 257",
            "credentials.max_concurrent_fetches",
            "257",
        ),
        ('[imds]\nstrict_proxy = "yes"', "imds.strict_proxy", "'yes'"),
        ("[imds]\nstrict_proxy = 1", "imds.strict_proxy", "1"),
        ("[imds]\nrate_per_second = 0", "imds.rate_per_second", "0"),
        ("[imds]\nrate_per_second = -5", "imds.rate_per_second", "-5"),
        ("[imds]\nrate_per_second = false", "imds.rate_per_second", "False"),
        ("[imds]\nrate_per_second = nan", "imds.rate_per_second", "nan"),
        ("[imds]\nrate_per_second = inf", "imds.rate_per_second", "inf"),
        ("[imds]\nburst = 0", "imds.burst", "0"),
        ("[imds]\nburst = 1.5", "imds.burst", "1.5"),
        ("[imds]\nport = 0", "imds.port", "0"),
        ("[imds]\nport = 65536", "imds.port", "65536"),
        ('[namespaces]\nprefix = ""', "namespaces.prefix", "''"),
        ('[namespaces]\nprefix = "rc/"', "namespaces.prefix", "'rc/'"),
        ('[namespaces]\nprefix = "-rc"', "namespaces.prefix", "'-rc'"),
        ('[namespaces]\nprefix = ".."', "namespaces.prefix", "'..'"),
        ('[namespaces]\nprefix = "rc "', "namespaces.prefix", "'rc '"),
        (f'[namespaces]\nprefix = "{"r" * 33}"', "namespaces.prefix", "r" * 33),
        ("[namespaces]\nprefix = 5", "namespaces.prefix", "5"),
    ],
)
def test_bad_value_is_refused_naming_the_key_and_the_value(text: str, key: str, shown: str) -> None:
    with pytest.raises(ConfigError) as raised:
        agent_config_from_string(f"{URLS}{text}\n")
    assert f"<config>: {key}: " in str(raised.value)
    assert shown in str(raised.value)


def test_error_names_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/rc/agent\.toml: metrics\.port"):
        agent_config_from_string(f"{URLS}[metrics]\nport = 70000\n", "/etc/rc/agent.toml")


def test_invalid_toml_is_refused_naming_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/rc/agent\.toml: not valid TOML"):
        agent_config_from_string("[controller\nurls = 1", "/etc/rc/agent.toml")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_configuration_is_frozen() -> None:
    parsed = agent_config_from_string(URLS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.metrics_port = 1  # type: ignore[misc]


def test_refresh_policy_carries_the_credentials_settings() -> None:
    parsed = agent_config_from_string(
        f"{URLS}[credentials]\nrefresh_fraction = 0.6\nmin_remaining_seconds = 3600\n"
    )
    assert parsed.refresh_policy() == RefreshPolicy(
        refresh_fraction=0.6, min_remaining_seconds=3600.0
    )


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("minimum", [60, 1800, 21600])
def test_every_accepted_credentials_setting_makes_a_valid_policy(
    fraction: float, minimum: int
) -> None:
    parsed = agent_config_from_string(
        f"{URLS}[credentials]\nrefresh_fraction = {fraction}\nmin_remaining_seconds = {minimum}\n"
    )
    assert parsed.refresh_policy().refresh_fraction == fraction


def test_load_agent_config_reads_the_named_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f"{URLS}[imds]\nport = 8080\n", encoding="utf-8")
    assert load_agent_config(path) == AgentConfig(
        controller_urls=("https://controller.example:8775",), imds_port=8080
    )


def test_load_agent_config_names_the_file_in_value_errors(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f"{URLS}[imds]\nport = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: imds\.port"):
        load_agent_config(path)


def test_load_agent_config_of_a_missing_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as raised:
        load_agent_config(path)
    assert str(path) in str(raised.value)


def test_load_agent_config_of_a_file_that_is_not_utf8_is_refused_naming_the_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"[controller]\nurls = ['\xff']\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not UTF-8"):
        load_agent_config(path)


def test_load_agent_config_without_a_path_reads_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "agent.toml"
    default.write_text(f"{URLS}[metrics]\nport = 9555\n", encoding="utf-8")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", default)
    assert load_agent_config().metrics_port == 9555


# -- [imds.upstream]: pass-through to an upstream metadata service -----------------------------

UPSTREAM = (
    '[imds.upstream]\nurl = "http://nova-metadata.example:8775"\n'
    'shared_secret_file = "/etc/rolecall/metadata-proxy.secret"\n'
)


def test_without_imds_upstream_nothing_is_forwarded() -> None:
    parsed = agent_config_from_string(URLS)
    assert (parsed.upstream_url, parsed.upstream_shared_secret_file) == (None, None)


def test_imds_upstream_defaults_to_neutrons_headers_2_seconds_and_1_mib() -> None:
    parsed = agent_config_from_string(URLS + UPSTREAM)
    assert parsed.upstream_url == "http://nova-metadata.example:8775"
    assert parsed.upstream_shared_secret_file == Path("/etc/rolecall/metadata-proxy.secret")
    assert (parsed.upstream_timeout_seconds, parsed.upstream_max_body_bytes) == (2.0, 1048576)
    assert parsed.upstream_scheme() == NEUTRON


def test_imds_upstream_takes_https_a_path_and_another_header_scheme() -> None:
    parsed = agent_config_from_string(
        URLS + '[imds.upstream]\nurl = "https://meta.example/v1/"\nshared_secret_file = "/s"\n'
        "timeout_seconds = 0.5\nmax_body_bytes = 65536\n"
        '[imds.upstream.headers]\ninstance_id = "X-VM-UUID"\naccount_id = ""\n'
        'signature = "X-VM-UUID-HMAC"\nforwarded_for = "X-Real-IP"\n'
    )
    assert parsed.upstream_url == "https://meta.example/v1"
    assert (parsed.upstream_timeout_seconds, parsed.upstream_max_body_bytes) == (0.5, 65536)
    assert parsed.upstream_scheme() == HeaderScheme(
        "X-VM-UUID", None, "X-VM-UUID-HMAC", "X-Real-IP"
    )


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ('url = "ftp://meta.example"', "imds.upstream.url", "'ftp://meta.example'"),
        ('url = "meta.example:8775"', "imds.upstream.url", "'meta.example:8775'"),
        ('url = "http://"', "imds.upstream.url", "'http://'"),
        ('url = "http://u:p@meta.example"', "imds.upstream.url", "'http://u:p@meta.example'"),
        ('url = "http://meta.example/?a=1"', "imds.upstream.url", "'http://meta.example/?a=1'"),
        ('url = "http://meta.example/#x"', "imds.upstream.url", "'http://meta.example/#x'"),
        ('url = "http://meta.example:99999"', "imds.upstream.url", "99999"),
        ('url = "http://meta example"', "imds.upstream.url", "'http://meta example'"),
        ('url = "http://méta.example"', "imds.upstream.url", "méta"),
        ("url = 5", "imds.upstream.url", "5"),
        ('shared_secret_file = ""', "imds.upstream.shared_secret_file", "''"),
        ("timeout_seconds = 0", "imds.upstream.timeout_seconds", "0"),
        ("timeout_seconds = 61", "imds.upstream.timeout_seconds", "61"),
        ('timeout_seconds = "2"', "imds.upstream.timeout_seconds", "'2'"),
        ("max_body_bytes = 1023", "imds.upstream.max_body_bytes", "1023"),
        ("max_body_bytes = 67108865", "imds.upstream.max_body_bytes", "67108865"),
        ("max_body_bytes = 1.5", "imds.upstream.max_body_bytes", "1.5"),
        ('headers.instance_id = ""', "imds.upstream.headers.instance_id", "''"),
        ('headers.signature = ""', "imds.upstream.headers.signature", "''"),
        ('headers.instance_id = "X Instance"', "imds.upstream.headers.instance_id", "X Instance"),
        ('headers.account_id = "X-Tenant:"', "imds.upstream.headers.account_id", "X-Tenant:"),
        ("headers.forwarded_for = 5", "imds.upstream.headers.forwarded_for", "5"),
        ('headers.instance_id = "Host"', "imds.upstream.headers.instance_id", "'Host'"),
        ('headers.account_id = "user-agent"', "imds.upstream.headers.account_id", "user-agent"),
        ('headers.signature = "Accept"', "imds.upstream.headers.signature", "'Accept'"),
        (
            'headers.forwarded_for = "X-aws-ec2-metadata-token"',
            "imds.upstream.headers.forwarded_for",
            "X-aws-ec2-metadata-token",
        ),
        ('headers.instance_id = "Content-Length"', "imds.upstream.headers.instance_id", "Content"),
        (
            'headers.signature = "x-instance-id"',
            "imds.upstream.headers.signature",
            "already the name of imds.upstream.headers.instance_id",
        ),
        (
            'headers.forwarded_for = "X-TENANT-ID"',
            "imds.upstream.headers.forwarded_for",
            "'X-TENANT-ID' is already the name of imds.upstream.headers.account_id",
        ),
    ],
)
def test_a_bad_imds_upstream_value_is_refused_naming_the_key(
    text: str, key: str, shown: str
) -> None:
    complete = 'url = "http://m.example"\nshared_secret_file = "/s"\n'
    body = text if text.startswith(("url", "shared")) else complete + text
    if text.startswith("url"):
        body += '\nshared_secret_file = "/s"'
    with pytest.raises(ConfigError) as raised:
        agent_config_from_string(f"{URLS}[imds.upstream]\n{body}\n")
    assert f"<config>: {key}: " in str(raised.value)
    assert shown in str(raised.value)


def test_a_header_left_out_frees_its_name_for_another() -> None:
    parsed = agent_config_from_string(
        URLS
        + UPSTREAM
        + '[imds.upstream.headers]\naccount_id = ""\nforwarded_for = "X-Tenant-ID"\n'
    )
    assert parsed.upstream_scheme().names() == (
        "X-Instance-ID",
        "X-Instance-ID-Signature",
        "X-Tenant-ID",
    )


def test_an_upstream_url_without_a_secret_file_is_refused_naming_the_missing_key() -> None:
    with pytest.raises(
        ConfigError, match=r"^<config>: imds\.upstream\.shared_secret_file: required"
    ):
        agent_config_from_string(f'{URLS}[imds.upstream]\nurl = "http://m.example"\n')


@pytest.mark.parametrize(
    "text", ['shared_secret_file = "/s"', "timeout_seconds = 5", 'headers.instance_id = "X-Id"']
)
def test_upstream_settings_without_a_url_are_refused_naming_the_url(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^<config>: imds\.upstream\.url: required with imds\."):
        agent_config_from_string(f"{URLS}[imds.upstream]\n{text}\n")


def test_the_upstream_settings_reach_the_serving_process_unchanged() -> None:
    for text in (URLS, URLS + UPSTREAM):
        parsed = agent_config_from_string(text)
        assert config_from_wire(json.loads(json.dumps(config_to_wire(parsed)))) == parsed


def test_the_plug_socket_defaults_to_the_runtime_directory_and_can_be_moved() -> None:
    assert agent_config_from_string(URLS).plug_socket == Path("/run/rolecall-agent/plug.sock")
    moved = agent_config_from_string(URLS + '[hypervisor]\nplug_socket = "/run/x/p.sock"\n')
    assert moved.plug_socket == Path("/run/x/p.sock")
    assert config_from_wire(json.loads(json.dumps(config_to_wire(moved)))) == moved


@pytest.mark.parametrize(
    ("value", "shown"),
    [('"relative.sock"', "relative.sock"), ('"/' + "a" * 107 + '"', "108 bytes"), ("7", "7")],
)
def test_a_plug_socket_that_cannot_be_a_socket_path_is_refused_naming_the_key(
    value: str, shown: str
) -> None:
    with pytest.raises(ConfigError, match=r"hypervisor\.plug_socket: .*" + re.escape(shown)):
        agent_config_from_string(URLS + f"[hypervisor]\nplug_socket = {value}\n")
