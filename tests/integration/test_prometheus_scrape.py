"""A real Prometheus scrapes the running service with the repo's job and alert rules.

The emails sent show up in a query, every alert rule evaluates without error, and every query
of the Grafana dashboard is valid PromQL over metrics the service really exports. Prometheus is
Debian's build, unpacked into .tools/ by scripts/fetch-tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from messaging_service.service.health import Health
from support.kafka import Broker, Topics, create_topic, free_port, produce, unique, wait_for
from support.service import InProcessService, in_process, request_payload, settings_for
from support.smtp_server import SmtpTestServer
from support.tools import (
    ALERT_RULES,
    PROMETHEUS_CONFIG,
    alert_rules,
    dashboard_queries,
    grafana_to_promql,
    healthcheck_command,
    load_yaml,
    metric_names,
    prometheus,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.deploy,
    pytest.mark.asyncio(loop_scope="module"),
]

JOB = "messaging-service"


def scrape_config(target: str) -> dict[str, Any]:
    """The repo's messaging-service job with a static target instead of DNS, every second."""
    config = load_yaml(PROMETHEUS_CONFIG)
    job = dict(next(job for job in config["scrape_configs"] if job["job_name"] == JOB))
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": [target]}]
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [job],
    }


@contextlib.contextmanager
def running_prometheus(directory: Path, target: str) -> Iterator[str]:
    """Prometheus on a free port scraping ``target``; yields its base URL."""
    binary = prometheus()
    config = directory / "prometheus.yml"
    config.write_text(json.dumps(scrape_config(target)))  # JSON is YAML
    port = free_port()
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Stack:
    service: InProcessService
    prometheus: str
    session: aiohttp.ClientSession

    async def api(self, path: str, **params: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(self.prometheus + path, params=params) as response:
            return response.status, await response.json()

    async def value(self, expression: str) -> float | None:
        """The single value of an instant query, or None while it has no result."""
        status, body = await self.api("/api/v1/query", query=expression)
        assert status == 200, body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The service after sending two emails and dead-lettering one request, scraped.

    One for the module: Prometheus 2.42 applies discovered targets only every 5 s, so its first
    scrape comes seconds after it starts.
    """
    topics = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    await create_topic(broker.bootstrap, topics.requests, partitions=3)
    await create_topic(broker.bootstrap, topics.dlq, partitions=1)
    directory = tmp_path_factory.mktemp("prometheus")
    async with SmtpTestServer() as relay:
        await produce(
            broker.bootstrap,
            topics.requests,
            [request_payload("scraped-1"), request_payload("scraped-2"), b"not json"],
        )
        async with in_process(settings_for(broker, topics, relay.port)) as service:
            await relay.wait_for_messages(2, within=30)
            await wait_for(
                lambda: service.metric("email_dead_letters_total", reason="invalid_payload") == 1,
                30,
                message="the invalid request was dead-lettered",
            )
            target = f"127.0.0.1:{service.running.http_port}"
            timeout = aiohttp.ClientTimeout(total=5)
            with running_prometheus(directory, target) as url:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    stack = Stack(service, url, session)

                    async def ready() -> bool:
                        with contextlib.suppress(aiohttp.ClientError):
                            async with session.get(url + "/-/ready") as response:
                                return response.status == 200
                        return False

                    log = directory / "prometheus.log"
                    await wait_for(ready, 30, interval=0.1, message=f"Prometheus ready ({log})")
                    await wait_for(
                        lambda: stack.value(f'up{{job="{JOB}"}}'), 30, message="target scraped"
                    )
                    yield stack


async def test_prometheus_scrapes_the_emails_the_service_sent(stack: Stack) -> None:
    async def scraped(expression: str, expected: float) -> bool:
        return await stack.value(expression) == expected

    await wait_for(lambda: scraped(f'up{{job="{JOB}"}}', 1), 30, message="target up")
    await wait_for(
        lambda: scraped(f'sum(email_sent_total{{job="{JOB}"}})', 2), 30, message="2 sent"
    )
    dead = f'sum by (reason) (email_dead_letters_total{{job="{JOB}", reason="invalid_payload"}})'
    assert await stack.value(dead) == 1
    every_check = len(Health().readiness())
    assert await stack.value(f'sum(email_readiness_check{{job="{JOB}"}})') == every_check


async def test_every_alert_rule_evaluates_without_error(stack: Stack) -> None:
    async def evaluated() -> list[dict[str, Any]] | None:
        status, body = await stack.api("/api/v1/rules")
        assert status == 200, body
        rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = await wait_for(evaluated, 30, interval=0.2, message="every rule evaluated")
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    failing = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not failing

    # Nothing is wrong with this service, so once it is scraped nothing stays pending or firing
    # (MessagingServiceAbsent is pending until the first scrape).
    async def quiet() -> bool:
        _, body = await stack.api("/api/v1/alerts")
        alerts: list[dict[str, Any]] = body["data"]["alerts"]
        return not alerts

    await wait_for(quiet, 30, interval=0.2, message="no alert pending or firing")


async def test_dashboard_and_alert_queries_are_valid_promql_over_exported_metrics(
    stack: Stack,
) -> None:
    status, exposition = await stack.service.get("/metrics")
    assert status == 200
    exported = exported_names(exposition)
    queries = [*dashboard_queries(), *((r["alert"], r["expr"]) for r in alert_rules())]
    assert len(queries) > 20
    for title, expression in queries:
        unknown = metric_names(expression) - exported
        assert not unknown, f"{title}: {sorted(unknown)} are not exported"
        code, body = await stack.api("/api/v1/query", query=grafana_to_promql(expression))
        assert code == 200, f"{title}: {body.get('error')}"
        assert body["status"] == "success", title


def exported_names(exposition: str) -> set[str]:
    """Every series name /metrics can produce, including histogram and counter suffixes."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


async def test_the_image_healthcheck_command_passes_on_a_live_service_only(
    stack: Stack,
) -> None:
    """The Dockerfile's HEALTHCHECK, run as it is: 0 against the service, not 0 without one."""
    command = healthcheck_command()
    assert command[0] == "python"

    async def check(port: int) -> int:
        # Not subprocess.run: the service answers from this very event loop.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *command[1:],
            env={"HTTP_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(30):
            return await process.wait()

    assert await check(stack.service.running.http_port) == 0
    assert await check(free_port()) != 0
