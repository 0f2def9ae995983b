"""Building and publishing email requests, for ``messaging-service send`` and dev mode."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from messaging_service.adapters.kafka_producer import Published, Publisher
from messaging_service.config import KafkaSettings


def new_request_id(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def build_request(
    *,
    id_: str,
    to: Sequence[str],
    template: str | None = None,
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    reply_to: str | None = None,
    subject: str | None = None,
    text: str | None = None,
    html: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A request document with only the fields that were given (the contract's defaults hold)."""
    optional: dict[str, Any] = {
        "template": template,
        "cc": list(cc) or None,
        "bcc": list(bcc) or None,
        "reply_to": reply_to,
        "subject": subject,
        "text": text,
        "html": html,
        "data": dict(data) if data else None,
    }
    request: dict[str, Any] = {"id": id_, "to": list(to)}
    request.update({key: value for key, value in optional.items() if value is not None})
    return request


def encode_request(request: Mapping[str, Any]) -> bytes:
    """The record value: UTF-8 JSON, as the service expects."""
    return json.dumps(request, ensure_ascii=False).encode()


class NoPriorityTopicError(ValueError):
    """``send --priority`` without KAFKA_PRIORITY_TOPIC: there is no lane to publish to."""


def request_topic(settings: KafkaSettings, *, priority: bool = False) -> str:
    """KAFKA_TOPIC, or KAFKA_PRIORITY_TOPIC for the priority lane."""
    if not priority:
        return settings.topic
    if settings.priority_topic is None:
        raise NoPriorityTopicError(
            "--priority needs KAFKA_PRIORITY_TOPIC (the priority lane's topic)"
        )
    return settings.priority_topic


async def publish_one(
    settings: KafkaSettings, value: bytes, *, key: bytes | None = None, priority: bool = False
) -> Published:
    """Publish one request to the requests topic, or the priority topic (``send``)."""
    topic = request_topic(settings, priority=priority)
    async with Publisher(settings, client_id=f"{settings.group_id}-send") as publisher:
        return await publisher.publish(topic, value, key=key)
