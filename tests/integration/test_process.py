"""The service as users run it: a separate process, stopped by SIGTERM or killed by SIGKILL."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import pytest

from support.kafka import Broker, Topics, committed_total, produce, wait_for
from support.service import ServiceProcess, request_payload, settings_for
from support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration


async def test_sigterm_drains_in_flight_requests_commits_and_exits_zero(
    broker: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    relay.delay_data(0.2)  # 40 requests on 4 workers: about two seconds of sending
    ids = [f"term-{i}" for i in range(40)]
    await produce(broker.bootstrap, topics.requests, [request_payload(id_) for id_ in ids])
    service = ServiceProcess(settings_for(broker, topics, relay.port), tmp_path / "log")
    processes.append(service)
    service.start()
    await service.wait_ready()
    await relay.wait_for_messages(1, within=30)

    service.signal(signal.SIGTERM)
    assert await service.wait_exit(timeout=60) == 0, service.log_tail()

    delivered = collections.Counter(message.email_id for message in relay.messages)
    assert delivered.keys() == set(ids), "every fetched request is finished before exit"
    assert max(delivered.values()) == 1
    assert await committed_total(broker, topics) == len(ids)
    events = [event["event"] for event in service.events()]
    assert "draining" in events
    assert "drained" in events
    assert events[-1] == "service_stopped"


async def test_sigkill_then_restart_loses_nothing(
    broker: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    relay.delay_data(0.05)
    ids = [f"kill-{i}" for i in range(120)]
    await produce(broker.bootstrap, topics.requests, [request_payload(id_) for id_ in ids])
    settings = settings_for(broker, topics, relay.port, workers=2)

    first = ServiceProcess(settings, tmp_path / "first.log")
    processes.append(first)
    first.start()
    await relay.wait_for_messages(20, within=60)
    first.kill()  # SIGKILL: no drain, no final commit
    assert first.process.returncode == -signal.SIGKILL
    delivered_before = len(relay.messages)
    committed_before = await committed_total(broker, topics)
    assert committed_before < len(ids)

    second = ServiceProcess(settings, tmp_path / "second.log")
    processes.append(second)
    second.start()
    await relay.wait_for_messages(len(ids), within=90)

    async def all_committed() -> bool:
        return await committed_total(broker, topics) == len(ids)

    await wait_for(all_committed, 30, message="everything committed after the restart")
    delivered = collections.Counter(message.email_id for message in relay.messages)
    assert set(delivered) == set(ids), "no request lost"
    duplicates = sum(delivered.values()) - len(ids)
    # Only requests finished after the last commit, or in flight at the kill (the relay may
    # have accepted those as the process died), can be sent twice.
    in_flight_at_kill = settings.email.worker_count
    assert duplicates <= delivered_before - committed_before + in_flight_at_kill
