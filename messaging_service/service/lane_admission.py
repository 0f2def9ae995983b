"""Admission with a priority lane: each lane fetched within its own room, priority looked at first.

The pipeline's one-lane admission pauses every partition once the queue is full. With two lanes
a full normal lane must not keep priority records out, so each topic is paused and fetched on
its own: the normal topic while the normal lane has no room, the priority topic while the
priority lane has none. Every fetch names the partitions it wants, so aiokafka keeps the records
it already fetched for a paused topic and hands them out after the resume, unread again.
"""

from __future__ import annotations

from typing import Protocol

from messaging_service.core.lanes import Lane
from messaging_service.core.values import InboundRecord

# How long one fetch may wait when both lanes take records: bounds how quickly a stop is seen.
_FETCH_WAIT_MS = 100
# Normal records taken per round: each is prepared (parsed, rendered) before the loop looks at
# the priority topic again, so a large batch would hold a priority record back by its CPU time.
_NORMAL_BATCH = 16
# While the normal lane is full only priority records can be taken: wait for them in short
# polls, so room appearing in the normal lane is seen soon (a poll costs tens of microseconds).
_PRIORITY_POLL_MS = 20


class Source(Protocol):
    async def fetch(
        self, *, max_records: int, timeout_ms: int, topics: tuple[str, ...] | None = None
    ) -> list[InboundRecord]: ...
    def pause(self, topic: str) -> None: ...
    def resume(self, topic: str) -> None: ...


class Admitter(Protocol):
    """What the pipeline lends: each lane's room, a wait for progress, and submission."""

    @property
    def refill(self) -> int: ...
    def room(self, lane: Lane) -> int: ...
    async def wait_for_progress(self) -> None: ...
    async def submit(self, records: list[InboundRecord]) -> None: ...


class LaneAdmission:
    """One admission step per call: fetch what each lane has room for, priority first."""

    def __init__(self, owner: Admitter, *, normal: str, priority: str) -> None:
        self._owner = owner
        self._normal = normal
        self._priority = priority
        self._both = (priority, normal)
        # Hysteresis for the normal lane, as in the one-lane admission: once full, wait for a
        # real batch of room before fetching it again.
        self._normal_paused = False

    async def admit(self, source: Source) -> None:
        owner = self._owner
        priority_room = owner.room(Lane.PRIORITY)
        normal_room = owner.room(Lane.NORMAL)
        priority_open = priority_room >= 1
        normal_open = normal_room >= (owner.refill if self._normal_paused else 1)
        self._steer(source, self._priority, open_=priority_open)
        self._steer(source, self._normal, open_=normal_open)
        self._normal_paused = not normal_open
        records: list[InboundRecord] = []
        if priority_open:
            # Never behind normal records aiokafka already holds: priority ones are taken first.
            records = await source.fetch(
                max_records=priority_room, timeout_ms=0, topics=(self._priority,)
            )
        if normal_open:
            normal_room = min(normal_room, owner.room(Lane.NORMAL) - len(records), _NORMAL_BATCH)
            if records:
                if normal_room >= 1:
                    records += await source.fetch(
                        max_records=normal_room, timeout_ms=0, topics=(self._normal,)
                    )
            elif priority_open:
                # Waits for either lane; within both rooms whichever lane the records are for.
                records = await source.fetch(
                    max_records=min(priority_room, normal_room),
                    timeout_ms=_FETCH_WAIT_MS,
                    topics=self._both,
                )
            else:
                records = await source.fetch(
                    max_records=normal_room, timeout_ms=_FETCH_WAIT_MS, topics=(self._normal,)
                )
        elif priority_open:
            if not records:
                records = await source.fetch(
                    max_records=priority_room,
                    timeout_ms=_PRIORITY_POLL_MS,
                    topics=(self._priority,),
                )
        else:
            # Both full (or the relay is down): wait for progress, then a poll that takes
            # nothing and keeps every buffered record, so the group does not think us gone.
            await owner.wait_for_progress()
            await source.fetch(max_records=1, timeout_ms=0, topics=())
        if records:
            if len(records) > 1:
                # Priority first into the queue: each submit yields to the workers.
                records.sort(key=lambda record: record.topic != self._priority)
            await owner.submit(records)

    @staticmethod
    def _steer(source: Source, topic: str, *, open_: bool) -> None:
        # Paused every time it is closed (idempotent): partitions assigned since come unpaused.
        if open_:
            source.resume(topic)
        else:
            source.pause(topic)
