"""A broker the tests can stop, and start again later on the same port and storage.

    with tansu_on_s3(tmp_path) as broker:            # satisfies RestartableBroker
        broker.stop()                                 # clients see the broker go away
        ...                                           # as long as the test wants
        broker.restart()                              # same port: topics, records, offsets kept

``RestartableBroker`` is all a test that takes the broker away needs: ``bootstrap``, ``stop``
and ``restart`` (which starts a stopped broker again), the shape the ``kafka`` branch gives
``support.kafka.RestartableBroker`` and its ``persistent_broker`` fixture (Tansu on S3 storage,
or an Apache Kafka restarted on its state directory). Here the one implementation is Tansu with
S3 storage (a moto server), as the broker-restart test in ``test_rebalance.py`` uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from messaging_service.dev.embedded import EmbeddedBroker
from support.s3 import s3_storage


class RestartableBroker(Protocol):
    """Stop, and start again on the same port without losing topics, records or offsets."""

    @property
    def bootstrap(self) -> str: ...

    def stop(self) -> None: ...

    def restart(self) -> None:
        """Start again (stopping first if it runs) on the same port and storage."""
        ...


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
