"""The broker goes away for good: shutdown still ends, says what it could not commit, exits 1.

Uses a broker of its own (it is stopped for good, which the session's shared one must not be).
"""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import pytest

from support.kafka import RestartableBroker, Topics, create_topic, produce, unique
from support.service import ServiceProcess, request_payload, settings_for
from support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration


async def test_sigterm_with_the_broker_gone_ends_in_time_and_exits_non_zero(
    own_broker: RestartableBroker,
    relay: SmtpTestServer,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    """Defect: with the broker stopped, SIGTERM logged shutdown_requested and then nothing; the
    process was still alive 90 s later (the final commit looked for the coordinator for ever).
    """
    topics = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    await create_topic(own_broker.bootstrap, topics.requests, partitions=3)
    await create_topic(own_broker.bootstrap, topics.dlq, partitions=1)
    ids = [f"gone-{i}" for i in range(12)]
    await produce(own_broker.bootstrap, topics.requests, [request_payload(i) for i in ids])
    settings = settings_for(
        own_broker,
        topics,
        relay.port,
        shutdown_timeout=5,
        # No periodic commit before the broker goes: the final commit has offsets to write.
        commit_interval_ms=600_000,
    )
    service = ServiceProcess(settings, tmp_path / "service.log")
    processes.append(service)
    service.start()
    await service.wait_ready()
    await relay.wait_for_messages(len(ids), within=60)

    own_broker.stop()
    service.signal(signal.SIGTERM)
    started = time.monotonic()
    # A bound only to turn a hang into a failure: SHUTDOWN_TIMEOUT plus the bounded calls
    # take far less; the measured time is printed, never asserted.
    code = await service.wait_exit(timeout=120)
    print(f"exited {code} after {time.monotonic() - started:.1f}s with the broker gone")
    assert code == 1, service.log_tail()

    events = {event["event"]: event for event in service.events()}
    failed = events["final_commit_failed"]
    # Every partition that had finished work is named with the offset it could not commit.
    uncommitted = failed["uncommitted"]
    assert sum(uncommitted.values()) == len(ids), uncommitted
    assert events["service_stopped"]["final_commit"] == "failed"
    assert collections.Counter(m.email_id for m in relay.messages) == collections.Counter(ids)
