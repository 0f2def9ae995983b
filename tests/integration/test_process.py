"""The service as users run it: a separate process, stopped by SIGTERM or killed by SIGKILL."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from support.kafka import Broker, Topics, committed_total
from support.service import ServiceProcess, settings_for
from support.smtp_server import SmtpTestServer
from support.steps import (
    deliveries,
    kill_9,
    launch,
    publish_requests,
    wait_all_committed,
)

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
    await publish_requests(broker, topics.requests, ids)
    settings = settings_for(broker, topics, relay.port)
    service = await launch(processes, settings, tmp_path / "log", ready_within=30)
    await relay.wait_for_messages(1, within=30)

    service.signal(signal.SIGTERM)
    assert await service.wait_exit(timeout=60) == 0, service.log_tail()

    delivered = deliveries(relay)
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
    await publish_requests(broker, topics.requests, ids)
    settings = settings_for(broker, topics, relay.port, workers=2)

    first = await launch(processes, settings, tmp_path / "first.log")
    await relay.wait_for_messages(20, within=60)
    at_kill = await kill_9(first, relay, broker, topics)
    assert at_kill.committed < len(ids)

    await launch(processes, settings, tmp_path / "second.log")
    await relay.wait_for_messages(len(ids), within=90)
    await wait_all_committed(broker, topics, len(ids), within=30)
    delivered = deliveries(relay)
    assert set(delivered) == set(ids), "no request lost"
    duplicates = sum(delivered.values()) - len(ids)
    # Only requests finished after the last commit, or in flight at the kill (the relay may
    # have accepted those as the process died), can be sent twice.
    in_flight_at_kill = settings.email.worker_count
    assert duplicates <= at_kill.delivered - at_kill.committed + in_flight_at_kill
