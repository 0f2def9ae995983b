"""The Prometheus config and alert rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.tools import (
    ALERT_RULES,
    ALERT_TESTS,
    PROMETHEUS_CONFIG,
    alert_rules,
    load_yaml,
    promtool,
)

pytestmark = pytest.mark.deploy


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool()), *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=60
    )


def test_prometheus_config_and_the_rule_files_it_loads_are_valid() -> None:
    result = run_promtool("check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS_CONFIG.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_alert_rules_are_valid() -> None:
    result = run_promtool("check", "rules", ALERT_RULES.name, cwd=ALERT_RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    result = run_promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_rule_with_a_broken_expression(tmp_path: Path) -> None:
    """promtool really parses PromQL, so the checks above can fail."""
    broken = tmp_path / "rules.yml"
    broken.write_text(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(email_sent_total)\n"
    )
    result = run_promtool("check", "rules", broken.name, cwd=tmp_path)
    assert result.returncode != 0


def test_every_alert_explains_itself_and_is_unit_tested_firing() -> None:
    tests = load_yaml(ALERT_TESTS)["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 40, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert name in fired, f"{name} has no promtool test where it fires"


def test_the_dead_letter_no_progress_lag_and_down_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "EmailDeadLetterRateHigh",
        "EmailNoProgress",
        "EmailConsumerLagGrowing",
        "EmailPriorityLagHigh",
        "MessagingServiceDown",
    } <= names
