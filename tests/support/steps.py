"""Steps the service-process tests share: start, publish, wait for deliveries and commits, kill."""

from __future__ import annotations

import collections
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from messaging_service.config import Settings
from support.kafka import Broker, Topics, committed_total, produce, wait_for
from support.service import ServiceProcess, request_payload
from support.smtp_server import TRY_LATER, SmtpTestServer


async def launch(
    processes: list[ServiceProcess],
    settings: Settings,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    ready_within: float | None = None,
) -> ServiceProcess:
    """Start ``messaging-service run``; with ``ready_within``, wait until ``/readyz`` says so.

    The process joins ``processes`` (the fixture), which kills it if the test does not.
    """
    service = ServiceProcess(settings, log_path, env=env)
    processes.append(service)
    service.start()
    if ready_within is not None:
        await service.wait_ready(timeout=ready_within)
    return service


async def publish_requests(
    broker: Broker, topic: str, ids: Sequence[str], *, keyed: bool = False
) -> list[tuple[int, int]]:
    """One request per id, in order; returns each record's (partition, offset)."""
    keys = [id_.encode() for id_ in ids] if keyed else None
    return await produce(broker.bootstrap, topic, [request_payload(id_) for id_ in ids], keys=keys)


def hold_back_every_tenth(relay: SmtpTestServer, ids: Sequence[str]) -> None:
    """Every tenth request fails once with a 4xx, the rest take 10 ms at the relay.

    Each failed one waits for its retry and holds its partition's commit point back, so
    requests finished after it stay uncommitted for a while.
    """
    for id_ in ids[::10]:
        relay.fail_data(TRY_LATER, email_id=id_, times=1)
    relay.delay_data(0.01)  # the rules above win for their ids


def delivered_ids(relay: SmtpTestServer) -> set[str | None]:
    return {message.email_id for message in relay.messages}


def deliveries(relay: SmtpTestServer) -> collections.Counter[str | None]:
    """How many times the relay accepted each email id."""
    return collections.Counter(message.email_id for message in relay.messages)


async def wait_all_delivered(relay: SmtpTestServer, ids: Sequence[str], within: float) -> None:
    await wait_for(
        lambda: set(ids) <= delivered_ids(relay),
        within,
        interval=0.2,
        message="every request delivered after the restart",
    )


async def wait_all_committed(broker: Broker, topics: Topics, count: int, within: float) -> None:
    async def all_committed() -> bool:
        return await committed_total(broker, topics) == count

    await wait_for(all_committed, within, message="everything committed after the restart")


@dataclass(frozen=True, slots=True)
class AtTheKill:
    delivered: int
    """Emails the relay had accepted."""
    committed: int
    """The group's committed offsets, summed over the requests topic."""


async def kill_9(
    service: ServiceProcess, relay: SmtpTestServer, broker: Broker, topics: Topics
) -> AtTheKill:
    """SIGKILL: no drain, no final commit; what was delivered and committed at that moment."""
    service.kill()
    assert service.process.returncode == -signal.SIGKILL
    return AtTheKill(len(relay.messages), await committed_total(broker, topics))
