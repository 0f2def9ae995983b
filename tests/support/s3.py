"""A local S3 server (moto) on 127.0.0.1, as persistent storage for a Tansu broker in tests.

    with s3_storage() as storage:
        broker = EmbeddedBroker(storage_engine=storage.url, environment=storage.environment)

Tansu's memory storage loses everything on a restart; with S3 storage a restarted broker
still has its topics, records and committed offsets (the S3 server outlives the broker).
moto runs as a process of its own: in a thread of the test process it would compete with the
test's relay and producer for the interpreter lock, and a broker busy with fetches, commits
and heartbeats keeps it busy.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from messaging_service.dev.embedded import HOST, free_port

_START_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class S3Storage:
    url: str
    environment: Mapping[str, str]


def _create_bucket(endpoint: str, bucket: str, process: subprocess.Popen[bytes]) -> None:
    # moto takes unsigned requests: a plain PUT creates the bucket.
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited with {process.returncode} at start")
        try:
            request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
            with urllib.request.urlopen(request, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto not answering at {endpoint}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def s3_storage(bucket: str = "tansu") -> Iterator[S3Storage]:
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _create_bucket(endpoint, bucket, process)
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
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
