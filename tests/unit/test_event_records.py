"""Outcome events as records: deterministic ids, CloudEvents headers, the value's fields."""

from __future__ import annotations

import json
import uuid

import pytest

from messaging_service.core import events
from messaging_service.core.events import (
    EventType,
    OutcomeEvent,
    RecipientResult,
    RecipientStatus,
    RequestFacts,
    SmtpReply,
    event_record,
    event_value,
    rfc3339,
)
from messaging_service.core.lanes import Lane
from support.events import check_value
from support.fakes import record

FACTS = RequestFacts(request_id="r-1", message_id="<abc@example.com>", template="welcome")


def event(type_: EventType = EventType.SENT, attempt: int = 1, **fields: object) -> OutcomeEvent:
    return OutcomeEvent(
        type=type_,
        record=record(b"{}", offset=7, partition=2),
        facts=fields.pop("facts", FACTS),  # type: ignore[arg-type]
        time=1_700_000_000.5,
        attempt=attempt,
        **fields,  # type: ignore[arg-type]
    )


def test_event_id_is_the_same_for_the_same_request_type_and_attempt() -> None:
    assert event().event_id == event().event_id
    assert event().event_id != event(attempt=2).event_id
    assert event().event_id != event(EventType.FAILED).event_id
    other = RequestFacts(request_id="r-2")
    assert event().event_id != event(facts=other).event_id


def test_a_request_without_an_id_is_named_by_its_record() -> None:
    anonymous = RequestFacts()
    assert event(facts=anonymous).event_id == event(facts=anonymous).event_id
    assert event(facts=anonymous).event_id != event().event_id


def test_the_record_carries_cloudevents_binary_mode_headers_and_the_request_id_as_key() -> None:
    built = event_record(event(), source="messaging-service/group-a")
    headers = {name: value.decode() for name, value in built.headers}
    value = json.loads(built.value)
    assert built.key == b"r-1"
    assert headers == {
        "ce_specversion": "1.0",
        "ce_id": value["event_id"],
        "ce_type": "email.sent",
        "ce_source": "messaging-service/group-a",
        "ce_time": "2023-11-14T22:13:20.500Z",
        "content-type": "application/json",
    }


def test_the_value_has_every_field_with_smtp_details_and_processing_time() -> None:
    refused = RecipientResult(
        "b@example.com", RecipientStatus.REFUSED, SmtpReply(550, "5.1.1 no such user")
    )
    value = event_value(
        event(
            EventType.SENT,
            recipients=[RecipientResult("a@example.com", RecipientStatus.ACCEPTED), refused],
        )
    )
    assert value["type"] == "email.sent"
    assert value["request_id"] == "r-1"
    assert value["message_id"] == "<abc@example.com>"
    assert value["template"] == "welcome"
    assert value["locale"] is None
    assert value["recipients"] == [
        {"address": "a@example.com", "status": "accepted", "smtp": None},
        {
            "address": "b@example.com",
            "status": "refused",
            "smtp": {"code": 550, "enhanced_status": "5.1.1", "response": "5.1.1 no such user"},
        },
    ]
    assert value["processing_time_ms"] == 500  # record timestamp 1_700_000_000_000 ms
    assert value["source"] == {"topic": "email.requests", "partition": 2, "offset": 7}
    assert value["lane"] == "normal"
    assert value["tags"] == []
    assert value["metadata"] == {}


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"


def test_events_of_every_type_match_the_published_schema() -> None:
    reply = SmtpReply(451, "4.3.0 try later")
    samples = [
        event(
            EventType.SENT, recipients=[RecipientResult("a@example.com", RecipientStatus.ACCEPTED)]
        ),
        event(
            EventType.DEFERRED, permanent=False, reason="smtp_transient", smtp=reply, retry_in=1.0
        ),
        event(
            EventType.FAILED,
            attempt=0,
            permanent=True,
            reason="invalid_payload",
            facts=RequestFacts(),
        ),
        event(EventType.DUPLICATE, reason="already_sent"),
        event(EventType.SUPPRESSED, attempt=0, reason="suppressed"),
    ]
    for sample in samples:
        check_value(event_value(sample))


def test_the_schema_refuses_a_failed_event_that_is_not_permanent() -> None:
    value = event_value(event(EventType.FAILED, permanent=False, reason="smtp_rejected"))
    with pytest.raises(AssertionError, match="permanent"):
        check_value(value)


def test_an_event_names_the_lane_its_request_came_in_by() -> None:
    value = event_value(event(lane=Lane.PRIORITY))
    check_value(value)
    assert value["lane"] == "priority"


@pytest.mark.parametrize("name", ["", "id:order-1\x1femail.sent\x1f1", "record:t/0/7", "ünï"])
def test_event_ids_are_the_uuid5_of_their_name(name: str) -> None:
    assert events._uuid5(name) == str(uuid.uuid5(events._NAMESPACE, name))
