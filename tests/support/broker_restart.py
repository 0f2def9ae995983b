"""A broker the tests can stop and start again on the same port and storage, whatever it is.

    with tansu_on_s3(tmp_path) as broker:            # satisfies RestartableBroker
        settings = ...(broker.bootstrap, kafka=broker.group_timeouts)
        broker.stop()                                 # clients see the broker go away
        broker.start()                                # same port: topics, records, offsets kept

``RestartableBroker`` is all a test that restarts the broker needs; today the one
implementation is Tansu with S3 storage (a moto server in the test process), as the
broker-restart test in ``test_rebalance.py`` uses. A real Apache Kafka restarted on its state
directory (``../shared/kafka``) fits the same shape: ``stop``/``start`` on the same ports, and
its own group timeouts (its minimum session timeout is 6 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from messaging_service.embedded import TANSU_GROUP_TIMEOUTS, EmbeddedBroker, free_port
from support.s3 import s3_storage


class RestartableBroker(Protocol):
    """Stop and start on the same port without losing topics, records or committed offsets."""

    @property
    def bootstrap(self) -> str: ...

    @property
    def group_timeouts(self) -> Mapping[str, int]:
        """session/heartbeat/rebalance timeouts (KafkaSettings field names) its consumers need."""
        ...

    def stop(self) -> None: ...

    def start(self) -> None: ...

    def log_tail(self, lines: int = 40) -> str: ...


class TansuOnS3:
    """An embedded Tansu on a pinned port with S3 storage: a restart keeps everything."""

    group_timeouts: Mapping[str, int] = TANSU_GROUP_TIMEOUTS

    def __init__(self, broker: EmbeddedBroker) -> None:
        self._broker = broker

    @property
    def bootstrap(self) -> str:
        return self._broker.bootstrap

    def stop(self) -> None:
        self._broker.stop()

    def start(self) -> None:
        self._broker.start()

    def log_tail(self, lines: int = 40) -> str:
        return self._broker.log_tail(lines)


@contextlib.contextmanager
def tansu_on_s3(directory: Path) -> Iterator[TansuOnS3]:
    """Tansu with S3 storage (moto on 127.0.0.1), logs in ``directory``; stopped afterwards."""
    with (
        s3_storage() as storage,
        EmbeddedBroker(
            log_dir=directory,
            # Pinned: a start after a stop must come back on the port the clients know.
            port=free_port(),
            storage_engine=storage.url,
            environment=storage.environment,
        ) as broker,
    ):
        yield TansuOnS3(broker)
