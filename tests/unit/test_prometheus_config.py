"""docs/prometheus: promtool accepts the scrape configuration and the alerting rules, the rules'
own unit tests pass, and every series and label value a rule reads is one RoleCall exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from twisted.python.failure import Failure

from agent.client import ControllerUnreachable, NodeApiError
from agent.metrics import PROXY_REASONS, AgentMetrics, FailoverCollector
from agent.reconcile import POLL_FAILURE_REASONS
from agent.rotation import failure_reason
from controller.metrics import ControllerMetrics, NodeContactCollector

DOCS = Path(__file__).resolve().parents[2] / "docs" / "prometheus"
CONFIG = DOCS / "prometheus.yml"
RULES = DOCS / "rolecall.rules.yml"
RULE_TESTS = DOCS / "rolecall.rules.test.yml"
SEVERITIES = {"warning", "critical"}
SERIES = re.compile(r"\brolecall_[a-z_]+\b")
#: Suffixes Prometheus sees on a family's samples, by the family's type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
}


def promtool(*arguments: str, cwd: Path = DOCS) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    assert executable, "promtool is missing: `make install` installs Debian's prometheus package"
    return subprocess.run(
        [executable, *arguments], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def exported_series() -> set[str]:
    """Every series name a scrape of the controller or an agent can contain."""
    registry = CollectorRegistry()
    # The database listener's gauge is there on PostgreSQL only.
    ControllerMetrics(registry, actions=[("iam", "GetRole")]).database_listener()
    idle_agent = SimpleNamespace(
        slots={},
        credentials=[],
        without_credentials=lambda: [],
        poll_failures_by_reason=dict.fromkeys(POLL_FAILURE_REASONS, 0),
        last_poll_success=None,
    )
    AgentMetrics(registry, idle_agent, standard=False)  # type: ignore[arg-type]
    # What an agent with several controller URLs adds.
    several_urls = SimpleNamespace(urls=("https://a:8775", "https://b:8775"), current=None)
    several_urls.failovers = {}
    registry.register(FailoverCollector(several_urls))  # type: ignore[arg-type]
    names = {NodeContactCollector.NAME}
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def test_promtool_accepts_the_scrape_configuration_and_the_rules_it_loads() -> None:
    result = promtool("check", "config", CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_alerting_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alerts())} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_refuses_a_rule_that_does_not_parse(tmp_path: Path) -> None:
    """The checks above can fail: promtool rejects a broken expression."""
    broken = load(RULES)
    broken["groups"][0]["rules"][0]["expr"] = "up{job=="
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = promtool("check", "rules", "broken.yml", cwd=tmp_path)
    assert result.returncode != 0


def test_every_alert_waits_names_a_severity_and_explains_itself() -> None:
    for alert in alerts():
        name = alert["alert"]
        assert alert.get("for"), f"{name} fires on a single evaluation (no `for:`)"
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = alert.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name} has no summary"
        assert annotations.get("description", "").strip(), f"{name} has no description"


def test_the_alerts_cover_expiry_refresh_failures_an_unreachable_controller_and_proxies() -> None:
    names = {alert["alert"] for alert in alerts()}
    assert {
        "RoleCallCredentialsExpiringSoon",
        "RoleCallCredentialsAboutToExpire",
        "RoleCallCredentialRefreshFailing",
        "RoleCallControllerDown",
        "RoleCallAgentCannotReachController",
        "RoleCallAgentNotPolling",
        "RoleCallNodeOutOfContact",
        "RoleCallProxiedMetadataRequestsRising",
        "RoleCallNoControllerUp",
        "RoleCallDatabaseListenerDown",
        "RoleCallAgentFailingOverRepeatedly",
    } <= names


def test_every_alert_has_a_rule_unit_test() -> None:
    tested = {
        case["alertname"] for test in load(RULE_TESTS)["tests"] for case in test["alert_rule_test"]
    }
    untested = {alert["alert"] for alert in alerts()} - tested
    assert not untested, f"no promtool test for {sorted(untested)}"


def test_every_series_the_rules_read_is_exported_by_rolecall() -> None:
    exported = exported_series()
    read = {name for alert in alerts() for name in SERIES.findall(alert["expr"])}
    assert read, "the rules read no RoleCall series"
    assert not read - exported, f"not exported by RoleCall: {sorted(read - exported)}"


def test_the_refresh_failure_reasons_the_rules_name_are_the_agents_labels() -> None:
    """The rules split refresh failures on reason="ControllerUnreachable", and the descriptions
    explain NodeApiError:STATUS: both are the labels the agent gives those failures."""
    text = RULES.read_text(encoding="utf-8")
    unreachable = failure_reason(Failure(ControllerUnreachable("connection refused")))
    assert f'reason="{unreachable}"' in text
    assert f'reason!="{unreachable}"' in text
    assert "NodeApiError:STATUS" in text
    for status in (403, 404, 409, 503):
        assert failure_reason(Failure(NodeApiError(status, "refused"))) == f"NodeApiError:{status}"
        assert f"{status}, " in text
    tested = re.findall(r'refresh_failures_total\{[^}]*reason="([^"]+)"', RULE_TESTS.read_text())
    assert failure_reason(Failure(NodeApiError(404, "no role"))) in tested


def test_the_proxy_reasons_in_the_rule_tests_are_the_agents() -> None:
    text = RULE_TESTS.read_text(encoding="utf-8")
    used = set(re.findall(r"imds_proxied_refused_total\{[^}]*reason=\"([^\"]+)\"", text))
    assert used
    assert used <= PROXY_REASONS


def test_the_scrape_configuration_names_the_jobs_the_rules_select() -> None:
    config = load(CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"rolecall-controller", "rolecall-agent"}
    assert config["rule_files"] == [RULES.name]
    selected = {job for alert in alerts() for job in re.findall(r'job="([^"]+)"', alert["expr"])}
    assert selected <= set(jobs)
    ports = {"rolecall-controller": ":9773", "rolecall-agent": ":9774"}
    for name, port in ports.items():
        targets = [t for group in jobs[name]["static_configs"] for t in group["targets"]]
        assert targets and all(target.endswith(port) for target in targets), (name, targets)
