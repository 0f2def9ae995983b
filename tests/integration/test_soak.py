"""A soak with every fault: two minutes of steady traffic to three replicas while things break.

A producer publishes requests at a steady rate to three service processes sharing one Redis
(the sent-id record). Each fault starts at a fixed point of the producer's progress (after N
requests sent, never at a time of day) and lasts a fixed time:

1. after ~10 s the relay goes away for 15 s and comes back (the circuit opens, requests are
   parked, consumption pauses);
2. after ~15 s, in the middle of the relay outage, the broker stops for longer than the
   group's session timeout and starts again on the same port and storage (the
   ``persistent_broker`` fixture: Tansu with S3 storage, or Apache Kafka on its state
   directory): the group rebalances while requests are parked;
3. after ~60 s one replica is killed with SIGKILL and started again;
4. after ~90 s Redis stops for 5 s and starts again on the same port. It is the persistent kind
   of the compose stack (Redis's default snapshotting): SIGTERM writes its snapshot and the
   restart loads it, so ids recorded before the outage are still known afterwards; ids the
   service failed to record during the outage are not.

The kill and the Redis outage are kept apart from the rest and from each other, so that the
duplicates each may cause can be told apart: the kill's are bounded by the workers of the
killed replica, the Redis outage's by the ids it touched (logged).

Routine failures run throughout: one request in twenty is deferred once (451) and retried,
one in a hundred names a template that does not exist and one in 150 has its recipient
refused (550); those two kinds are dead-lettered.

20 requests a second for two minutes (2,400), three replicas of four workers on six
partitions; the whole test takes a little over two minutes on an idle machine. The broker is
one of its own of the session's kind (``persistent_broker``): Tansu with S3 storage (moto, in
a process of its own) beside Tansu, another Apache Kafka beside the Apache Kafka of
``TEST_BROKER=kafka``; with ``KAFKA_BOOTSTRAP_SERVERS`` the soak skips, since it restarts its
broker. It only uses ``bootstrap``, ``stop()`` and ``restart()``, and the group timeouts of the
broker's kind. A summary of the
counts and a timeline of the faults is printed (``-s`` shows it) and written to
``soak-summary.txt`` in the test's tmp dir.

What must hold at the end (counts, never timing):
- nothing lost: every request id reached the relay or, for the bad ones only, the dead-letter
  topic; no good request was dead-lettered;
- duplicates at the relay within the bound the design gives with Redis: sends under way when
  the replica was killed (at most one per worker of that replica), requests whose sent-id
  look-up or record failed during the Redis outage (each logs ``dedup_unavailable`` with its
  ``email_id``), and requests the producer itself wrote twice to the topic (its retries across
  the broker restart; acks=all without idempotence is at least once too);
- every offset committed: the group's committed offset of each partition equals the end of the
  partition, found by reading the topic (Tansu's ``end_offsets()`` cannot be trusted).
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from support.kafka import (
    RestartableBroker,
    Topics,
    committed_offsets,
    create_topic,
    group_timeouts,
    read_all,
    unique,
    wait_for,
)
from support.redis_server import RedisServer
from support.service import ServiceProcess, request_payload, settings_for
from support.smtp_server import TRY_LATER, SmtpTestServer

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(900)]

RATE = 20  # requests per second, all replicas together
REQUESTS = RATE * 120  # about two minutes
PARTITIONS = 6
REPLICAS = 3
WORKERS = 4  # per replica

RELAY_OUTAGE = 15.0
# The broker stays down this much longer than the group's session timeout: the group lapses.
BROKER_DOWN_BEYOND_SESSION = 3.0
REPLICA_DOWN = 2.0
REDIS_DOWN = 5.0

# When each fault starts, as requests sent so far.
RELAY_AT = REQUESTS // 12  # after ~10 s
BROKER_AT = REQUESTS // 8  # ~15 s: in the middle of the relay outage
KILL_AT = REQUESTS // 2  # ~60 s, everything settled again
REDIS_AT = REQUESTS * 3 // 4  # ~90 s


def is_flaky(n: int) -> bool:
    return n % 20 == 7  # deferred once with a 451, then accepted


def has_no_template(n: int) -> bool:
    return n % 100 == 13  # dead-lettered: template_error


def is_refused(n: int) -> bool:
    return n % 150 == 31  # dead-lettered: smtp_rejected


def request_id(n: int) -> str:
    return f"soak-{n:05d}"


def payload(n: int) -> bytes:
    if has_no_template(n):
        return request_payload(request_id(n), template="no_such_template")
    return request_payload(request_id(n))


@dataclass
class SteadyProducer:
    """Publishes ``payload(n)`` for n < ``count`` at ``rate`` per second, keyed by id."""

    bootstrap: str
    topic: str
    count: int
    rate: float
    sent: int = 0
    acknowledged: int = 0
    started_at: float = 0.0

    async def run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=100,  # fewer, larger batches: each one is an object in S3 storage
            request_timeout_ms=30_000,
            retry_backoff_ms=200,
        )
        await producer.start()
        try:
            loop = asyncio.get_running_loop()
            self.started_at = loop.time()
            deliveries = []
            for n in range(self.count):
                delay = self.started_at + n / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                delivery = await producer.send(self.topic, payload(n), key=request_id(n).encode())
                delivery.add_done_callback(self._acknowledged)
                deliveries.append(delivery)
                self.sent = n + 1
            async with asyncio.timeout(120):
                await asyncio.gather(*deliveries)
        finally:
            await producer.stop()

    def _acknowledged(self, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is None:
            self.acknowledged += 1

    async def reached(self, count: int) -> None:
        await wait_for(lambda: self.sent >= count, 600, interval=0.02, message=f"{count} sent")


@dataclass
class Tally:
    """The relay's messages counted by id, reading only those that arrived since last time."""

    relay: SmtpTestServer
    delivered: collections.Counter[str | None] = field(default_factory=collections.Counter)
    _seen: int = 0

    def update(self) -> collections.Counter[str | None]:
        messages = self.relay.messages
        self.delivered.update(message.email_id for message in messages[self._seen :])
        self._seen = len(messages)
        return self.delivered


@dataclass
class Timeline:
    """What happened when, in seconds since the producer started, for the summary."""

    producer: SteadyProducer
    entries: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        elapsed = asyncio.get_running_loop().time() - self.producer.started_at
        self.entries.append(f"{elapsed:6.1f}s sent={self.producer.sent:5d} {what}")


def script_relay(relay: SmtpTestServer) -> tuple[set[str], set[str]]:
    """Script the relay's answers; returns the ids that must be delivered and the others."""
    good = {request_id(n) for n in range(REQUESTS) if not has_no_template(n) and not is_refused(n)}
    bad = {request_id(n) for n in range(REQUESTS)} - good
    for n in range(REQUESTS):
        if is_flaky(n) and request_id(n) in good:
            relay.fail_data(TRY_LATER, email_id=request_id(n), times=1)
        if is_refused(n):
            relay.refuse_recipient(f"{request_id(n)}@example.com")
    # A relay that takes its time (the rules above win for their ids): at the kill, sends are
    # under way and some requests are finished but not committed yet.
    relay.delay_data(0.05)
    return good, bad


def ids_in(records: list[Any]) -> list[str]:
    return [json.loads(record.value)["id"] for record in records]


async def test_soak_every_fault_loses_nothing_bounds_duplicates_and_commits_everything(
    persistent_broker: RestartableBroker,
    relay: SmtpTestServer,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    broker = persistent_broker
    broker_down = group_timeouts(broker)["session_timeout_ms"] / 1000 + BROKER_DOWN_BEYOND_SESSION
    began = time.monotonic()
    topics = Topics(requests=unique("requests"), dlq=unique("dlq"), group=unique("group"))
    await create_topic(broker.bootstrap, topics.requests, partitions=PARTITIONS)
    await create_topic(broker.bootstrap, topics.dlq, partitions=1)

    good, bad = script_relay(relay)

    redis = RedisServer(tmp_path / "redis", persistent=True)
    redis.start()
    try:
        # The group timeouts are settings_for's: those the broker's kind accepts.
        settings = settings_for(
            broker,
            topics,
            relay.port,
            workers=WORKERS,
            buffer=50,
            retry_delays="1,5,10",
            smtp_timeout=2.0,
            redis_url=redis.url,
            # The killed replica's claims hold its sends under way back this long.
            dedup={"claim_ttl": 10},
        )
        probe = {"SMTP_PROBE_INTERVAL": "1"}
        replicas = [
            ServiceProcess(settings, tmp_path / f"replica-{n}.log", env=probe)
            for n in range(1, REPLICAS + 1)
        ]
        processes.extend(replicas)
        for replica in replicas:
            replica.start()
        for replica in replicas:
            await replica.wait_ready(timeout=60)

        producer = SteadyProducer(broker.bootstrap, topics.requests, REQUESTS, RATE)
        timeline = Timeline(producer)
        observed: dict[str, float] = {}

        async def during(
            seconds: float, what: str, stop: Callable[[], Any], start: Callable[[], Any]
        ) -> None:
            timeline.note(f"{what} down")
            await asyncio.to_thread(stop)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(start)
            timeline.note(f"{what} back")

        async def kill_and_restart() -> None:
            victim = replicas[-1]
            observed["in_flight_at_kill"] = await victim.sample("email_in_flight_requests")
            observed["uncommitted_at_kill"] = await victim.sample(
                "email_uncommitted_finished_offsets"
            )
            victim.kill()  # SIGKILL: no drain, no commit, no record of the sends under way
            assert victim.process.returncode == -signal.SIGKILL
            timeline.note(
                f"replica {REPLICAS} killed (in flight {observed['in_flight_at_kill']:.0f})"
            )
            await asyncio.sleep(REPLICA_DOWN)
            reborn = ServiceProcess(settings, tmp_path / f"replica-{REPLICAS}-again.log", env=probe)
            processes.append(reborn)
            replicas[-1] = reborn
            reborn.start()
            await reborn.wait_ready(timeout=60)
            timeline.note(f"replica {REPLICAS} ready again")

        schedule: list[tuple[int, Callable[[], Awaitable[None]]]] = [
            (RELAY_AT, lambda: during(RELAY_OUTAGE, "relay", relay.stop, relay.start)),
            (BROKER_AT, lambda: during(broker_down, "broker", broker.stop, broker.restart)),
            (KILL_AT, kill_and_restart),
            (REDIS_AT, lambda: during(REDIS_DOWN, "redis", redis.stop, redis.start)),
        ]

        async def when(after: int, fault: Callable[[], Awaitable[None]]) -> None:
            await producer.reached(after)
            await fault()

        # Each fault waits for its own point of the producer's progress: they may overlap.
        async with asyncio.TaskGroup() as group:
            group.create_task(producer.run())
            for after, fault in schedule:
                group.create_task(when(after, fault))
        timeline.note(f"producer done, {producer.acknowledged} acknowledged")

        problems: list[str] = []
        tally = Tally(relay)
        try:
            await wait_for(
                lambda: good <= tally.update().keys(),
                240,
                interval=1.0,
                message="every good request delivered",
            )
        except AssertionError as exc:
            problems.append(str(exc))
        timeline.note("good requests delivered" if not problems else "delivery incomplete")

        requests = await read_all(broker.bootstrap, topics.requests, timeout=120)
        ends = collections.Counter[int]()
        for record in requests:
            ends[record.partition] = max(ends[record.partition], record.offset + 1)
        expected = {p: ends.get(p, 0) for p in range(PARTITIONS)}

        async def all_committed() -> bool:
            offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
            observed["committed"] = sum(o or 0 for o in offsets.values())
            return {p: o or 0 for p, o in offsets.items()} == expected

        try:
            await wait_for(all_committed, 120, interval=0.5, message="every offset committed")
        except AssertionError as exc:
            offsets = await committed_offsets(broker.bootstrap, topics.group, topics.requests)
            problems.append(f"{exc}: committed {offsets}, partition ends {expected}")
        timeline.note("offsets checked")

        dead_letters = ids_in(await read_all(broker.bootstrap, topics.dlq, timeout=120))
        alive = [r for r in replicas if r.process.poll() is None]
        if len(alive) != REPLICAS:
            problems.append(
                f"replicas exited: {[r.log_path.name for r in replicas if r not in alive]}"
            )
    finally:
        redis.stop()

    # --- the accounting -----------------------------------------------------------------------
    written = collections.Counter(ids_in(requests))
    delivered = tally.update()
    dead = collections.Counter(dead_letters)
    all_ids = good | bad
    lost = sorted(all_ids - set(delivered) - set(dead))
    good_dead_lettered = sorted(good & set(dead))
    bad_delivered = sorted(bad & set(delivered))
    duplicates = {id_: count - 1 for id_, count in delivered.items() if count > 1}
    dead_duplicates = sum(count - 1 for count in dead.values() if count > 1)
    written_twice = {id_ for id_, count in written.items() if count > 1}

    logs = [replica.events() for replica in processes]
    events = [event for replica_events in logs for event in replica_events]
    dedup_failed = {e.get("email_id") for e in events if e.get("event") == "dedup_unavailable"}
    dedup_failed.discard(None)
    kill_bound = WORKERS  # one send under way per worker of the killed replica
    by_redis = set(duplicates) & dedup_failed
    by_producer = (set(duplicates) & written_twice) - by_redis
    explained = by_redis | by_producer
    unexplained = {id_: n for id_, n in duplicates.items() if id_ not in explained}
    bound = kill_bound + len(dedup_failed) + sum(written[id_] - 1 for id_ in written_twice)
    counts = collections.Counter(
        e["event"]
        for e in events
        if e.get("event") not in {"email_sent", "email_retry_scheduled", "email_parked"}
    )
    summary = {
        "runtime_s": round(time.monotonic() - began, 1),
        "requests": REQUESTS,
        "acknowledged_by_broker": producer.acknowledged,
        "records_in_topic": len(requests),
        "written_twice_by_producer": len(written_twice),
        "good": len(good),
        "bad": len(bad),
        "delivered_unique": len(delivered),
        "delivered_total": sum(delivered.values()),
        "duplicates": sum(duplicates.values()),
        "duplicates_of_ids_hit_by_redis_outage": sum(duplicates[i] for i in by_redis),
        "duplicates_of_ids_written_twice": sum(duplicates[i] for i in by_producer),
        "duplicates_unexplained": sum(unexplained.values()),
        "duplicate_bound": bound,
        "dedup_unavailable_ids": len(dedup_failed),
        "in_flight_at_kill": observed.get("in_flight_at_kill"),
        "finished_uncommitted_at_kill": observed.get("uncommitted_at_kill"),
        "skipped_as_already_sent": counts["email_duplicate_skipped"],
        "dead_letters_unique": len(dead),
        "dead_letter_duplicates": dead_duplicates,
        "lost": len(lost),
        "good_dead_lettered": len(good_dead_lettered),
        "bad_delivered": len(bad_delivered),
        "committed": observed.get("committed"),
        "partition_ends": sum(expected.values()),
        "sent_per_replica_log": {
            replica.log_path.name: sum(1 for e in log if e.get("event") == "email_sent")
            for replica, log in zip(processes, logs, strict=True)
        },
        "events": dict(sorted(counts.items())),
    }
    report = "\n".join(
        ["soak timeline:", *timeline.entries, "soak summary: " + json.dumps(summary, indent=1)]
    )
    print(report)
    (tmp_path / "soak-summary.txt").write_text(report + "\n")

    assert not lost, f"lost {len(lost)} requests, e.g. {lost[:10]}\n{report}"
    assert not good_dead_lettered, f"dead-lettered good requests {good_dead_lettered[:10]}"
    assert not bad_delivered, f"delivered requests that should be refused {bad_delivered[:10]}"
    assert not problems, "\n".join([*problems, report])
    assert sum(duplicates.values()) <= bound, (
        f"{sum(duplicates.values())} duplicates, bound {bound}: unexplained {unexplained}\n{report}"
    )
    # Only the kill can explain duplicates that neither the Redis outage nor the producer did.
    assert sum(unexplained.values()) <= kill_bound, f"unexplained {unexplained}\n{report}"
