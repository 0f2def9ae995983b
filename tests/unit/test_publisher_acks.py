"""A queued record's acknowledgement: settled by the producer's future, or failed in time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from messaging_service.adapters.kafka_producer import PublishError, acknowledgement
from messaging_service.errors import EventsUnavailableError


def producer_future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


async def test_settles_when_the_broker_acknowledges() -> None:
    sent = producer_future()
    acked = acknowledgement(sent, "email.events", 10, PublishError)
    assert not acked.done()
    sent.set_result(object())  # aiokafka's RecordMetadata
    await asyncio.sleep(0)
    assert acked.done()
    assert acked.result() is None


async def test_a_producer_error_fails_it_with_the_callers_error() -> None:
    sent = producer_future()
    acked = acknowledgement(sent, "email.events", 10, EventsUnavailableError)
    sent.set_exception(KafkaTimeoutError())
    with pytest.raises(EventsUnavailableError, match=r"cannot write to email\.events"):
        await acked


async def test_a_cancelled_send_fails_it() -> None:
    sent = producer_future()
    acked = acknowledgement(sent, "email.events", 10, PublishError)
    sent.cancel()
    with pytest.raises(PublishError, match="cancelled"):
        await acked


async def test_noacknowledgement_in_time_fails_it_and_a_late_one_changes_nothing() -> None:
    sent = producer_future()
    acked = acknowledgement(sent, "email.events", 0.01, PublishError)
    with pytest.raises(PublishError, match=r"not acknowledged within 0\.01 s"):
        await acked
    sent.set_result(object())
    await asyncio.sleep(0)  # the late settle must not raise InvalidStateError
