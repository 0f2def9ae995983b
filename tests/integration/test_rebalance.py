"""Rebalances and a stuck relay, for real: two service processes, and the liveness watchdog."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import signal
from pathlib import Path

import pytest

from support.kafka import (
    Broker,
    RestartableBroker,
    Topics,
    committed_offsets,
    committed_total,
    create_topic,
    group_timeouts,
    produce,
    unique,
    wait_for,
)
from support.service import ServiceProcess, in_process, request_payload, settings_for
from support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration


async def gauge(service: ServiceProcess, name: str) -> float:
    _, body = await service.get("/metrics")
    match = re.search(rf"^{name} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_a_replica_stopped_mid_batch_loses_nothing_and_duplicates_stay_below_in_flight(
    broker: Broker, relay: SmtpTestServer, processes: list[ServiceProcess], tmp_path: Path
) -> None:
    """Two replicas on six partitions; one gets SIGTERM, the other takes over its partitions."""
    topics = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    await create_topic(broker.bootstrap, topics.requests, partitions=6)
    await create_topic(broker.bootstrap, topics.dlq, partitions=1)
    # Slow enough that the survivor is still busy when the group takes partitions away.
    relay.delay_data(0.2)
    settings = settings_for(broker, topics, relay.port, workers=4, buffer=8, max_in_flight=12)
    replicas = [ServiceProcess(settings, tmp_path / f"replica-{n}.log") for n in (1, 2)]
    processes.extend(replicas)
    for replica in replicas:
        replica.start()
    for replica in replicas:
        await replica.wait_ready(timeout=60)

    async def split_evenly() -> bool:
        return [await gauge(r, "email_assigned_partitions") for r in replicas] == [3.0, 3.0]

    await wait_for(split_evenly, 60, interval=0.2, message="three partitions each")

    ids = [f"reb-{i}" for i in range(400)]
    keys = [id_.encode() for id_ in ids]
    await produce(
        broker.bootstrap, topics.requests, [request_payload(id_) for id_ in ids], keys=keys
    )
    await relay.wait_for_messages(60, within=60)
    stopped, survivor = replicas
    in_flight = sum([await gauge(r, "email_in_flight_requests") for r in replicas])
    stopped.signal(signal.SIGTERM)
    assert await stopped.wait_exit(timeout=60) == 0, stopped.log_tail()

    await relay.wait_for_messages(len(ids), within=120)

    async def all_committed() -> bool:
        offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
        return sum(offset or 0 for offset in offsets.values()) == len(ids)

    await wait_for(all_committed, 60, interval=0.2, message="everything committed")
    delivered = collections.Counter(message.email_id for message in relay.messages)
    assert set(delivered) == set(ids), "no request lost"
    duplicates = sum(delivered.values()) - len(ids)
    revocations = [e for e in survivor.events() if e["event"] == "partitions_revoked"]
    finishing = [e for e in survivor.events() if e["event"] == "revocation_finishing"]
    print(f"in flight at the stop {in_flight:.0f}, duplicates {duplicates}, {revocations}")
    assert finishing, "the survivor finished its in-flight requests before letting go"
    assert duplicates < in_flight


async def test_healthz_fails_while_the_relay_holds_a_send_and_recovers_after_progress(
    broker: Broker, topics: Topics, relay: SmtpTestServer
) -> None:
    relay.delay_data(8.0, times=1)  # accepts the connection, answers DATA only after 8 s
    settings = settings_for(
        broker,
        topics,
        relay.port,
        workers=1,
        smtp_timeout=60,
        runtime={"watchdog_timeout": 1.0},
    )
    async with in_process(settings) as service:
        assert (await service.get("/healthz"))[0] == 200
        ids = [f"stuck-{i}" for i in range(3)]
        await produce(broker.bootstrap, topics.requests, [request_payload(id_) for id_ in ids])

        async def stuck() -> tuple[str, float] | None:
            status, body = await service.get("/healthz")
            if status != 503:
                return None
            return json.loads(body)["status"], service.metric("email_seconds_since_progress")

        found = await wait_for(stuck, 30, interval=0.1, message="/healthz turns 503")
        assert found is not None  # wait_for returns only a truthy answer
        verdict, stalled = found
        assert verdict == "stuck"
        assert stalled > 0

        async def healthy() -> bool:
            return (await service.get("/healthz"))[0] == 200

        await wait_for(healthy, 60, interval=0.1, message="/healthz 200 again after progress")
        await relay.wait_for_messages(len(ids), within=30)
        assert collections.Counter(m.email_id for m in relay.messages) == collections.Counter(ids)


async def test_a_broker_restart_mid_batch_loses_nothing_and_the_service_reconnects(
    persistent_broker: RestartableBroker,
    relay: SmtpTestServer,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    broker = persistent_broker
    topics = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    await create_topic(broker.bootstrap, topics.requests, partitions=3)
    await create_topic(broker.bootstrap, topics.dlq, partitions=1)
    relay.delay_data(0.05)
    settings = settings_for(broker, topics, relay.port, workers=4, buffer=8, max_in_flight=12)
    service = ServiceProcess(settings, tmp_path / "service.log")
    processes.append(service)
    service.start()
    await service.wait_ready(timeout=60)
    ids = [f"restart-{i}" for i in range(300)]
    await produce(
        broker.bootstrap,
        topics.requests,
        [request_payload(id_) for id_ in ids],
        keys=[id_.encode() for id_ in ids],
    )
    await relay.wait_for_messages(60, within=60)

    committed_before = await committed_total(broker, topics)
    broker.stop()
    # Down for longer than the group's session timeout: the broker's view of the group lapses.
    await asyncio.sleep(group_timeouts(broker)["session_timeout_ms"] / 1000 + 2)
    broker.restart()  # same port, same storage: records and committed offsets survive
    delivered_when_back = len(relay.messages)

    await relay.wait_for_messages(len(ids), within=120)

    async def all_committed() -> bool:
        return await committed_total(broker, topics) == len(ids)

    await wait_for(all_committed, 90, interval=0.2, message="everything committed")
    assert service.process.poll() is None, "the service rode out the restart"
    assert (await service.get("/healthz"))[0] == 200
    delivered = collections.Counter(message.email_id for message in relay.messages)
    assert set(delivered) == set(ids), "no request lost"
    duplicates = sum(delivered.values()) - len(ids)
    events = collections.Counter(event["event"] for event in service.events())
    print(
        f"broker restart: committed before {committed_before}, delivered when back "
        f"{delivered_when_back}, duplicates {duplicates}, events "
        f"{ {k: v for k, v in events.items() if k != 'email_sent'} }"
    )
    # Only requests finished since the last commit before the restart, and those held
    # (at most max_in_flight) when the group took the partitions back, can be sent twice.
    assert duplicates <= delivered_when_back - committed_before + settings.email.max_in_flight
