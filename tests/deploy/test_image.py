"""The image as users run it: built from the Dockerfile by scripts/image, run with podman.

The container runs with host networking against the test broker and SMTP server, hardened
the way docs/operations.md and deploy/kubernetes run it: a read-only root file system, every
capability dropped, no new privileges. Needs podman and runc as root (scripts/container-tools
installs them; CI runs it); skipped elsewhere with the reason, failed under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from support.kafka import (
    ApacheKafkaBroker,
    Broker,
    EmbeddedBroker,
    Topics,
    committed_total,
    create_topic,
    free_port,
    produce,
    select_broker,
    unique,
    wait_for,
)
from support.otlp import OtlpReceiver
from support.service import environment_for, request_payload, settings_for
from support.smtp_server import SmtpTestServer
from support.tools import REPO, missing_tool

pytestmark = [pytest.mark.deploy, pytest.mark.integration, pytest.mark.timeout(900)]

# One tag per worktree: other checkouts on the same machine build their own.
TAG = f"localhost/messaging-service:test-{hashlib.sha256(str(REPO).encode()).hexdigest()[:10]}"
# Only the service's own settings reach the container, never the test run's environment.
SETTING_PREFIXES = ("KAFKA_", "SMTP_", "EMAIL_", "HTTP_", "LOG_", "DEDUP_")
SETTING_NAMES = ("SHUTDOWN_TIMEOUT", "WATCHDOG_TIMEOUT")
# What a root podman needs on this kind of machine; scripts/image says why.
PODMAN = ("podman", "--runtime", "runc")
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000")


def podman_unusable() -> str | None:
    """Why podman cannot run containers here, or None."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        return "podman and runc are not installed: run scripts/container-tools (as root)"
    if os.geteuid() != 0:
        return "podman runs containers here as root only"
    info = subprocess.run(
        [*PODMAN, "info"], capture_output=True, text=True, check=False, timeout=60
    )
    if info.returncode != 0:
        return f"podman info failed: {info.stderr.strip()[-300:]}"
    return None


async def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:  # noqa: ASYNC109 - bounds one command
    process = await asyncio.create_subprocess_exec(
        *PODMAN, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


def build_image(tag: str, **environment: str) -> str:
    """scripts/image TAG, with build settings (WITH_OTEL) in its environment."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "image"), tag],
        capture_output=True,
        text=True,
        check=False,
        timeout=840,
        env={**os.environ, **environment},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == tag
    return tag


@pytest.fixture(scope="module")
def image() -> str:
    """The image scripts/image builds from this checkout (layers cached between runs)."""
    reason = podman_unusable()
    if reason:
        missing_tool(reason)
    return build_image(TAG)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The broker the environment asks for (as the integration tests' one), for this module."""
    selected = select_broker(
        log_dir=tmp_path_factory.mktemp("tansu"),
        kafka_state_dir=tmp_path_factory.mktemp("kafka"),
    )
    if not isinstance(selected, (EmbeddedBroker, ApacheKafkaBroker)):
        yield selected
        return
    with selected:
        yield selected


@pytest.fixture
async def topics(broker: Broker) -> Topics:
    names = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    await create_topic(broker.bootstrap, names.requests, partitions=3)
    await create_topic(broker.bootstrap, names.dlq, partitions=1)
    return names


@pytest.fixture
async def relay() -> AsyncIterator[SmtpTestServer]:
    async with SmtpTestServer() as server:
        yield server


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    http_port: int

    async def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(url) as response,
        ):
            return response.status, await response.text()

    async def inspect(self, template: str) -> str:
        result = await podman("inspect", "--format", template, self.name)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    async def logs(self) -> str:
        result = await podman("logs", self.name)
        return result.stdout + result.stderr

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            if await self.inspect("{{.State.Running}}") != "true":
                raise AssertionError(f"the container stopped:\n{(await self.logs())[-4000:]}")
            try:
                status, body = await self.get("/readyz")
            except aiohttp.ClientError:
                return False
            return status == 200 and json.loads(body)["status"] == "ready"

        await wait_for(ready, 60, interval=0.2, message="container ready")


def container_environment(environment: Mapping[str, str]) -> list[str]:
    """``--env NAME=VALUE`` for each of the service's settings."""
    options: list[str] = []
    for name, value in sorted(environment.items()):
        if name.startswith(SETTING_PREFIXES) or name in SETTING_NAMES:
            options += ["--env", f"{name}={value}"]
    return options


@pytest.fixture
async def container(
    image: str, broker: Broker, topics: Topics, relay: SmtpTestServer
) -> AsyncIterator[Container]:
    """The service's container, started hardened; removed afterwards."""
    http_port = free_port()
    settings = settings_for(broker, topics, relay.port, shutdown_timeout=30)
    name = f"messaging-service-test-{uuid.uuid4().hex[:10]}"
    started = await podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
        *ULIMITS,
        *container_environment(environment_for(settings, http_port=http_port)),
        image,
    )
    assert started.returncode == 0, started.stderr
    try:
        yield Container(name, http_port)
    finally:
        await podman("rm", "--force", "--time", "0", name)


def process_status(pid: str) -> dict[str, str]:
    """/proc/PID/status of the container's main process, seen from the host."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


async def test_container_sends_is_ready_and_healthy_and_runs_unprivileged(
    broker: Broker, topics: Topics, relay: SmtpTestServer, container: Container
) -> None:
    await container.wait_ready()
    ids = [f"image-{i}" for i in range(20)]
    await produce(broker.bootstrap, topics.requests, [request_payload(id_) for id_ in ids])
    await relay.wait_for_messages(len(ids), within=60)
    assert {message.email_id for message in relay.messages} == set(ids)

    status, body = await container.get("/readyz")
    assert status == 200, body
    health = await podman("healthcheck", "run", container.name)
    assert health.returncode == 0, health.stdout + health.stderr

    process = process_status(await container.inspect("{{.State.Pid}}"))
    assert process["Uid"].split() == ["10001"] * 4, process["Uid"]
    assert process["Gid"].split() == ["10001"] * 4, process["Gid"]
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(process[capabilities], 16) == 0, capabilities
    assert process["NoNewPrivs"] == "1"
    assert await container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    write = await podman("exec", container.name, "touch", "/opt/venv/written")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr


async def test_podman_stop_with_work_in_flight_drains_and_exits_zero(
    broker: Broker, topics: Topics, relay: SmtpTestServer, container: Container
) -> None:
    relay.delay_data(0.2)  # 40 requests on 4 workers: about two seconds of sending
    await container.wait_ready()
    ids = [f"stop-{i}" for i in range(40)]
    await produce(broker.bootstrap, topics.requests, [request_payload(id_) for id_ in ids])
    await relay.wait_for_messages(1, within=60)

    stopped = await podman("stop", "--time", "40", container.name)
    assert stopped.returncode == 0, stopped.stderr
    logs = await container.logs()
    assert await container.inspect("{{.State.ExitCode}}") == "0", logs[-4000:]
    delivered = collections.Counter(message.email_id for message in relay.messages)
    assert delivered.keys() == set(ids), "every fetched request is finished before exit"
    assert max(delivered.values()) == 1
    assert await committed_total(broker, topics) == len(ids)
    events = []
    for line in logs.splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line)["event"])
    assert "drained" in events


async def test_operator_commands_run_in_the_image_and_dev_says_what_it_lacks(image: str) -> None:
    """What the Dockerfile's header promises: `render` and the others work, `dev` does not."""
    base = ("run", "--rm", "--network", "none", *ULIMITS, image)
    rendered = await podman(*base, "render", "welcome", "--data", '{"name": "Bob"}')
    assert rendered.returncode == 0, rendered.stderr
    assert "Subject: Welcome, Bob!" in rendered.stdout
    dev = await podman(*base, "dev", "--once")
    assert dev.returncode == 2, dev.stdout + dev.stderr
    assert "needs the optional 'embedded' extra" in dev.stderr


async def test_the_image_built_with_otel_exports_traces(
    broker: Broker, topics: Topics, relay: SmtpTestServer, image: str
) -> None:
    """WITH_OTEL=true adds the otel extra; the default image has no OpenTelemetry at all."""
    probe = ("run", "--rm", "--network", "none", *ULIMITS, "--entrypoint", "python")
    plain = await podman(*probe, image, "-c", "import opentelemetry.sdk")
    assert plain.returncode != 0
    assert "No module named 'opentelemetry'" in plain.stderr
    traced = build_image(f"{TAG}-otel", WITH_OTEL="true")

    async with OtlpReceiver() as receiver:
        settings = settings_for(broker, topics, relay.port)
        http_port = free_port()
        environment = environment_for(settings, http_port=http_port)
        name = f"messaging-service-test-{uuid.uuid4().hex[:10]}"
        started = await podman(
            "run", "--detach", "--name", name, "--network", "host", "--read-only",
            "--cap-drop", "all", *ULIMITS, *container_environment(environment),
            "--env", f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint}",
            "--env", "OTEL_BSP_SCHEDULE_DELAY=100",
            traced,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        try:
            container = Container(name, http_port)
            await container.wait_ready()
            await produce(broker.bootstrap, topics.requests, [request_payload("traced")])
            await relay.wait_for_messages(1, within=60)
            await wait_for(
                lambda: receiver.named(f"process {topics.requests}"), 30, message="span exported"
            )
        finally:
            await podman("rm", "--force", "--time", "0", name)
    assert receiver.resources[0]["service.name"] == "messaging-service"
