"""A local S3 server (moto) on 127.0.0.1, as persistent storage for a Tansu broker in tests.

    with s3_storage() as storage:
        broker = EmbeddedBroker(storage_engine=storage.url, environment=storage.environment)

Tansu's memory storage loses everything on a restart; with S3 storage a restarted broker
still has its topics, records and committed offsets (the S3 server lives in the test).
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from moto.server import ThreadedMotoServer

from messaging_service.embedded import HOST, free_port


@dataclass(frozen=True, slots=True)
class S3Storage:
    url: str
    environment: Mapping[str, str]


@contextlib.contextmanager
def s3_storage(bucket: str = "tansu") -> Iterator[S3Storage]:
    port = free_port()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://{HOST}:{port}"
        # moto takes unsigned requests: a plain PUT creates the bucket.
        with urllib.request.urlopen(
            urllib.request.Request(f"{endpoint}/{bucket}", method="PUT"), timeout=10
        ):
            pass
        yield S3Storage(
            url=f"s3://{bucket}/",
            environment={
                "AWS_ENDPOINT": endpoint,
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true",
            },
        )
    finally:
        server.stop()
