"""deploy/kubernetes: rendered by kustomize, validated against the real schemas, checked by checkov.

Core kinds are validated by ``kubernetes-validate`` (Kubernetes' own OpenAPI schemas, strict:
an unknown field fails); the custom kinds against the CRDs vendored in ``tests/deploy/crds``
(see its README), with unknown fields refused as the API server's strict field validation does.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from support.tools import (
    ALERT_RULES,
    COMPOSE_FILE,
    KUBERNETES,
    REPO,
    checkov,
    kubectl,
    load_yaml,
    secret_settings,
    settings_variables,
)

pytestmark = pytest.mark.deploy

CRDS = Path(__file__).parent / "crds"
NAME = "messaging-service"
# The oldest and newest Kubernetes versions kubernetes-validate has schemas for.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def render(program: Path | str = "") -> str:
    result = subprocess.run(
        [str(program or kubectl()), "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def rendered() -> str:
    return render()


@pytest.fixture(scope="module")
def objects(rendered: str) -> dict[str, dict[str, Any]]:
    """Kind -> the one object of that kind the base renders."""
    found: dict[str, dict[str, Any]] = {}
    for document in yaml.safe_load_all(rendered):
        assert document["kind"] not in found, document["kind"]
        found[document["kind"]] = document
    return found


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the openAPIV3Schema of every vendored CRD version."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = load_yaml(path)
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[api_version, crd["spec"]["names"]["kind"]] = version["schema"][
                "openAPIV3Schema"
            ]
    return schemas


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused where the CRD lists its fields."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def crd_errors(document: dict[str, Any]) -> list[str]:
    schema = crd_schemas()[document["apiVersion"], document["kind"]]
    validator = jsonschema.Draft4Validator(strict(schema))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


def pod_labels(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


# --- rendering and schemas -------------------------------------------------------------------


def test_kustomize_renders_every_object_the_deployment_needs(
    objects: dict[str, dict[str, Any]],
) -> None:
    assert set(objects) == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ScaledObject",
        "PodMonitor",
        "PrometheusRule",
    }
    for kind, document in objects.items():
        assert document["metadata"]["name"] == NAME, kind
        assert document["metadata"]["namespace"] == NAME, kind
        assert document["metadata"]["labels"]["app.kubernetes.io/name"] == NAME, kind


def test_a_newer_kubectl_on_path_renders_the_same(rendered: str) -> None:
    """The base keeps to old kustomize features, so every kubectl since 1.20 gives one result."""
    newer = shutil.which("kubectl")
    if newer is None or Path(newer).resolve() == kubectl().resolve():
        pytest.skip("no other kubectl on PATH")
    assert render(newer) == rendered


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(
    objects: dict[str, dict[str, Any]], version: str
) -> None:
    core = [d for d in objects.values() if (d["apiVersion"], d["kind"]) not in crd_schemas()]
    assert len(core) == 6
    for document in core:
        kubernetes_validate.validate(document, version, strict=True)


def test_kubernetes_validate_rejects_a_broken_deployment(
    objects: dict[str, dict[str, Any]],
) -> None:
    broken = copy.deepcopy(objects["Deployment"])
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 45  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_custom_objects_validate_against_their_vendored_crds(
    objects: dict[str, dict[str, Any]],
) -> None:
    custom = [d for d in objects.values() if (d["apiVersion"], d["kind"]) in crd_schemas()]
    assert {d["kind"] for d in custom} == {"ScaledObject", "PodMonitor", "PrometheusRule"}
    for document in custom:
        assert crd_errors(document) == [], document["kind"]


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("ScaledObject", ("spec", "scaleTargetRef"), None),  # required
        ("ScaledObject", ("spec", "maxReplicaCount"), "six"),  # an integer
        ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "scrapeInterval"), "15s"),  # unknown
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "for"), "2 minutes"),  # a duration
    ],
)
def test_the_crd_schemas_reject_broken_objects(
    objects: dict[str, dict[str, Any]], kind: str, path: tuple[str | int, ...], value: Any
) -> None:
    broken = copy.deepcopy(objects[kind])
    parent: Any = broken
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    assert crd_errors(broken)


# --- checkov -----------------------------------------------------------------------------------


def explained_checks() -> set[str]:
    """The checkov checks kustomization.yaml explains in its heading comment."""
    text = (KUBERNETES / "kustomization.yaml").read_text()
    return set(re.findall(r"^#\s+(CKV2?_K8S_\d+)\s+\"", text, flags=re.MULTILINE))


def checkov_failures(manifest: Path) -> set[str]:
    result = subprocess.run(
        [str(checkov()), "--framework", "kubernetes", "--file", str(manifest), "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    failed: set[str] = set()
    for report in reports if isinstance(reports, list) else [reports]:
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 50  # it really checked the objects
        failed |= {check["check_id"] for check in report["results"]["failed_checks"]}
    return failed


def test_checkov_fails_only_the_checks_explained_in_the_kustomization(
    rendered: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered)
    failed = checkov_failures(manifest)
    assert failed <= explained_checks(), f"unexplained: {failed - explained_checks()}"
    assert explained_checks() <= failed, f"explained but passing: {explained_checks() - failed}"


def test_checkov_fails_a_privileged_container(
    objects: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    deployment = copy.deepcopy(objects["Deployment"])
    (spec,) = deployment["spec"]["template"]["spec"]["containers"]
    spec["securityContext"] = {"privileged": True}
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    failed = checkov_failures(manifest)
    assert "CKV_K8S_16" in failed  # "Container should not be privileged"
    assert "CKV_K8S_22" in failed  # "Use read-only filesystem for containers where possible"


# --- what the objects promise ----------------------------------------------------------------


def test_prometheus_rule_is_the_alert_rules_file() -> None:
    """One source of truth: deploy/prometheus/alerts.yml, copied by scripts/prometheusrule."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "prometheusrule"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rule = load_yaml(KUBERNETES / "prometheusrule.yaml")
    assert rule["spec"] == load_yaml(ALERT_RULES)


def test_deployment_is_probed_hardened_and_bounded(objects: dict[str, dict[str, Any]]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    main = container(objects)
    assert "replicas" not in objects["Deployment"]["spec"]  # the ScaledObject owns the count
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    (port,) = main["ports"]
    assert port["containerPort"] == int(objects["ConfigMap"]["data"]["HTTP_PORT"])
    shutdown = float(objects["ConfigMap"]["data"]["SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > shutdown
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    hardening = main["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"] == {"drop": ["ALL"]}
    for kind in ("requests", "limits"):
        assert set(main["resources"][kind]) == {"cpu", "memory"}
    assert main["args"] == ["run"]


def test_settings_come_from_the_configmap_and_secrets_from_the_secret(
    objects: dict[str, dict[str, Any]],
) -> None:
    main = container(objects)
    configured = set(objects["ConfigMap"]["data"])
    known = set(settings_variables())
    assert configured <= known, configured - known
    assert not configured & secret_settings(), "secrets belong in the Secret"
    assert main["envFrom"] == [{"configMapRef": {"name": NAME}}]
    from_secret = {
        variable["name"]: variable["valueFrom"]["secretKeyRef"] for variable in main["env"]
    }
    assert set(from_secret) == secret_settings()
    for name, reference in from_secret.items():
        assert reference == {"name": NAME, "key": name, "optional": True}


def test_the_dkim_key_is_a_read_only_secret_volume_where_the_setting_points(
    objects: dict[str, dict[str, Any]],
) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (mount,) = container(objects)["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount["name"] == volume["name"]
    assert mount["readOnly"] is True
    config = objects["ConfigMap"]["data"]
    assert config["DKIM_DOMAIN"]
    assert config["DKIM_SELECTOR"]  # signing needs all three
    key_file = Path(config["DKIM_PRIVATE_KEY_FILE"])
    assert key_file.parent == Path(mount["mountPath"])
    (item,) = volume["secret"]["items"]
    assert item["path"] == key_file.name
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def compose_partitions() -> int:
    script = " ".join(load_yaml(COMPOSE_FILE)["services"]["kafka-init"]["command"])
    match = re.search(r"--partitions (\d+)", script)
    assert match
    return int(match.group(1))


def test_keda_scales_the_deployment_on_the_groups_lag_up_to_the_partition_count(
    objects: dict[str, dict[str, Any]],
) -> None:
    scaled = objects["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= compose_partitions()
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    config = objects["ConfigMap"]["data"]
    # Read from the container's environment, so they are the service's own settings.
    assert metadata["bootstrapServersFromEnv"] == "KAFKA_BOOTSTRAP_SERVERS"
    assert metadata["topicFromEnv"] == "KAFKA_TOPIC"
    assert metadata["consumerGroupFromEnv"] == "KAFKA_GROUP_ID"
    for variable in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "KAFKA_GROUP_ID"):
        assert config[variable], variable
    assert int(metadata["lagThreshold"]) > 0
    assert metadata["allowIdleConsumers"] == "false"
    assert metadata["offsetResetPolicy"] == "earliest"
    # Every key is one KEDA's kafka scaler reads (its schema leaves metadata free-form).
    assert set(metadata) <= {
        "bootstrapServersFromEnv",
        "topicFromEnv",
        "consumerGroupFromEnv",
        "lagThreshold",
        "activationLagThreshold",
        "offsetResetPolicy",
        "allowIdleConsumers",
        "limitToPartitionsWithLag",
    }


def test_scraping_and_disruptions_select_the_pods_under_the_alerts_job_name(
    objects: dict[str, dict[str, Any]],
) -> None:
    labels = pod_labels(objects)
    monitor = objects["PodMonitor"]["spec"]
    assert selects(monitor["selector"], labels)
    # The job label comes from this pod label; the alert rules select job="messaging-service".
    assert labels[monitor["jobLabel"]] == NAME
    assert f'job="{NAME}"' in ALERT_RULES.read_text()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in container(objects)["ports"]}
    assert endpoint["path"] == "/metrics"
    assert selects(objects["PodDisruptionBudget"]["spec"]["selector"], labels)
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert selects(
        {"matchLabels": objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]}, labels
    )
    assert (
        objects["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"]
        == (objects["ServiceAccount"]["metadata"]["name"])
    )
