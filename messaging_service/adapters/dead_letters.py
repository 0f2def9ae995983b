"""Dead-letter publishing: the original record, unchanged, plus headers that say why."""

from __future__ import annotations

from messaging_service.adapters.kafka_producer import Publisher, PublishError
from messaging_service.config import KafkaSettings
from messaging_service.core.lifetime import ClosedOnExit
from messaging_service.core.values import DeadLetter
from messaging_service.errors import DeadLetterUnavailableError

# Header values are UTF-8 text (decimal numbers included) so any tool can read them.
H_TOPIC = "kafka_dlt-original-topic"
H_PARTITION = "kafka_dlt-original-partition"
H_OFFSET = "kafka_dlt-original-offset"
H_TIMESTAMP = "kafka_dlt-original-timestamp"
H_GROUP = "kafka_dlt-original-consumer-group"
H_FQCN = "kafka_dlt-exception-fqcn"
H_MESSAGE = "kafka_dlt-exception-message"
H_REASON = "email-failure-reason"
H_ATTEMPTS = "email-attempts"
H_SMTP_CODE = "email-smtp-code"
DEAD_LETTER_HEADERS = (
    H_TOPIC,
    H_PARTITION,
    H_OFFSET,
    H_TIMESTAMP,
    H_GROUP,
    H_FQCN,
    H_MESSAGE,
    H_REASON,
    H_ATTEMPTS,
    H_SMTP_CODE,
)
MAX_MESSAGE_LENGTH = 500


def dead_letter_headers(letter: DeadLetter, *, group_id: str) -> list[tuple[str, bytes]]:
    """The original headers followed by the dead-letter headers (pure; tested directly)."""
    record = letter.record
    error = letter.error
    message = str(error).replace("\r", " ").replace("\n", " ")
    if len(message) > MAX_MESSAGE_LENGTH:
        message = message[: MAX_MESSAGE_LENGTH - 1] + "…"
    added = {
        H_TOPIC: record.topic,
        H_PARTITION: str(record.partition),
        H_OFFSET: str(record.offset),
        H_TIMESTAMP: str(record.timestamp_ms if record.timestamp_ms is not None else ""),
        H_GROUP: group_id,
        H_FQCN: f"{type(error).__module__}.{type(error).__qualname__}",
        H_MESSAGE: message,
        H_REASON: letter.reason.value,
        H_ATTEMPTS: str(letter.attempts),
    }
    if letter.smtp_code is not None:
        added[H_SMTP_CODE] = str(letter.smtp_code)
    original = record.headers
    if letter.trace_headers:
        replaced = {name for name, _ in letter.trace_headers}
        original = tuple(header for header in original if header[0] not in replaced)
    return [
        *original,
        *letter.trace_headers,
        *((name, value.encode()) for name, value in added.items()),
    ]


class KafkaDeadLetterSink(ClosedOnExit):
    """Publishes to the dead-letter topic and waits for the broker's acknowledgement."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._publisher = Publisher(settings, client_id=f"{settings.group_id}-dlq")

    async def __aenter__(self) -> KafkaDeadLetterSink:
        try:
            await self._publisher.start()
        except PublishError as exc:
            raise DeadLetterUnavailableError(str(exc)) from exc
        return self

    async def close(self) -> None:
        await self._publisher.close()

    async def publish(self, letter: DeadLetter) -> None:
        record = letter.record
        headers = dead_letter_headers(letter, group_id=self._settings.group_id)
        try:
            await self._publisher.publish(
                self._settings.dlq_topic, record.value, key=record.key, headers=headers
            )
        except PublishError as exc:
            raise DeadLetterUnavailableError(str(exc)) from exc
