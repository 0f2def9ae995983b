"""Tansu with S3 storage: an embedded broker whose restart keeps its topics, records and offsets.

    with tansu_on_s3(tmp_path) as broker:            # a support.kafka.RestartableBroker
        broker.stop()                                 # clients see the broker go away
        ...                                           # as long as the test wants
        broker.restart()                              # same port: topics, records, offsets kept

The ``persistent_broker`` fixture (tests/integration/conftest.py) gives this beside the
embedded Tansu, and an Apache Kafka restarted on its state directory beside Apache Kafka.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from messaging_service.dev.embedded import EmbeddedBroker
from support.kafka import RestartableBroker
from support.s3 import s3_storage

__all__ = ["RestartableBroker", "tansu_on_s3"]


@contextlib.contextmanager
def tansu_on_s3(directory: Path) -> Iterator[EmbeddedBroker]:
    """Tansu with S3 storage (moto on 127.0.0.1), logs in ``directory``; stopped afterwards.

    ``EmbeddedBroker.restart()`` keeps the port, and S3 keeps the data.
    """
    with (
        s3_storage() as storage,
        EmbeddedBroker(
            log_dir=directory,
            storage_engine=storage.url,
            environment=storage.environment,
        ) as broker,
    ):
        yield broker
