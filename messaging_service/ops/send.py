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


async def publish_one(
    settings: KafkaSettings, value: bytes, *, key: bytes | None = None
) -> Published:
    """Publish one request to the requests topic (``messaging-service send``)."""
    async with Publisher(settings, client_id=f"{settings.group_id}-send") as publisher:
        return await publisher.publish(settings.topic, value, key=key)
