"""Duplicates after ``kill -9``, counted per id at the relay, with each sent-id store.

Every tenth request fails once with a 4xx and waits 3 s for its retry, holding its partition's
commit point back, so at the kill many finished requests are not committed yet. Without a shared
record (the in-memory default) the restarted process sends them all again (on Apache Kafka
fewer: the committed offset maps list some); with Redis it skips them, and only sends that were
under way at the kill (the relay's 250 reached it, the record did not get written) can be
duplicated: at most one per worker. Their claims outlive the kill: the restarted process waits
for them to expire (DEDUP_CLAIM_TTL, short here) before it sends those requests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.kafka import Broker, Topics
from support.redis_server import RedisServer
from support.service import ServiceProcess, settings_for
from support.smtp_server import SmtpTestServer
from support.steps import (
    deliveries,
    hold_back_every_tenth,
    kill_9,
    launch,
    publish_requests,
    wait_all_committed,
    wait_all_delivered,
)

pytestmark = pytest.mark.integration

REQUESTS = 400
WORKERS = 4


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_kill_9_mid_batch_loses_nothing_and_counts_duplicates(
    store: str,
    broker: Broker,
    topics: Topics,
    relay: SmtpTestServer,
    processes: list[ServiceProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    redis_url = None
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        redis_url = server.url
    ids = [f"crash-{i}" for i in range(REQUESTS)]
    hold_back_every_tenth(relay, ids)
    await publish_requests(broker, topics.requests, ids)
    settings = settings_for(
        broker,
        topics,
        relay.port,
        workers=WORKERS,
        retry_delays="3",
        redis_url=redis_url,
        dedup={"claim_ttl": 10},
    )

    first = await launch(processes, settings, tmp_path / "first.log")
    await relay.wait_for_messages(REQUESTS * 2 // 5, within=120)
    in_flight_at_kill = await first.sample("email_in_flight_requests")
    # No record of what was under way survives the kill.
    at_kill = await kill_9(first, relay, broker, topics)
    delivered_before, committed_before = at_kill.delivered, at_kill.committed
    assert committed_before < REQUESTS

    second = await launch(processes, settings, tmp_path / "second.log")
    await wait_all_delivered(relay, ids, within=120)
    await wait_all_committed(broker, topics, REQUESTS, within=60)
    delivered = deliveries(relay)
    assert set(delivered) == set(ids), "no request lost"
    duplicates = sum(delivered.values()) - REQUESTS
    # Skipped by id (the sent-id record) or, where the broker keeps commit metadata (Apache
    # Kafka), by offset first: the offset map of the last commit lists finished offsets.
    skipped_by_id = await second.sample("email_duplicates_skipped_total")
    skipped_by_offset = await second.sample("email_skipped_finished_total")
    skipped = skipped_by_id + skipped_by_offset
    print(
        f"\nkill -9 duplicates, store={store}: {duplicates} of {REQUESTS} requests "
        f"(delivered before the kill {delivered_before}, committed {committed_before}, "
        f"in flight {in_flight_at_kill:.0f}; skipped after the restart {skipped_by_id:.0f} "
        f"by id, {skipped_by_offset:.0f} by offset map)"
    )
    # Without a shared record, whatever finished after the last commit is sent again.
    assert duplicates <= delivered_before - committed_before + WORKERS
    if store == "redis":
        # Only a send under way at the kill can be repeated: one per worker at most, which is
        # below the requests in flight at the kill.
        assert duplicates <= WORKERS
        assert duplicates < in_flight_at_kill
        assert skipped >= delivered_before - committed_before - WORKERS
