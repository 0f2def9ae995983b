"""The worker pool's queue when a priority lane is on: one bounded deque per lane, one getter side.

Workers take from it through ``LanePicker``: priority first, at most its share while normal
jobs wait. Each lane has its own capacity and its own room event, so a full normal lane never
keeps a priority job out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from messaging_service.core.lanes import LANES, Lane, LanePicker

Job: TypeAlias = Callable[[], Awaitable[object]]


class LaneQueue:
    """Two bounded FIFO lanes; ``get()`` waits for a job and picks its lane by share."""

    def __init__(self, *, capacity: int, share: float) -> None:
        self._capacity = capacity
        self._picker = LanePicker(share)
        self._lanes: dict[Lane, deque[Job]] = {lane: deque() for lane in LANES}
        self._room: dict[Lane, asyncio.Event] = {lane: asyncio.Event() for lane in LANES}
        for event in self._room.values():
            event.set()
        self._getters: deque[asyncio.Future[None]] = deque()

    def qsize(self, lane: Lane | None = None) -> int:
        if lane is not None:
            return len(self._lanes[lane])
        return sum(len(jobs) for jobs in self._lanes.values())

    def empty(self) -> bool:
        return not any(self._lanes.values())

    def full(self, lane: Lane) -> bool:
        return len(self._lanes[lane]) >= self._capacity

    def room(self, lane: Lane) -> asyncio.Event:
        """Set while ``lane`` has room."""
        return self._room[lane]

    def wake_all(self) -> None:
        """Set every room event: submitters wake up and look at the pool's state."""
        for event in self._room.values():
            event.set()

    def put_nowait(self, job: Job, lane: Lane) -> None:
        jobs = self._lanes[lane]
        jobs.append(job)
        if len(jobs) >= self._capacity:
            self._room[lane].clear()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                break

    async def get(self) -> Job:
        while self.empty():
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                if getter.done() and not getter.cancelled() and not self.empty():
                    self._wake_next()  # the wake-up meant for us goes to another worker
                raise
        return self.get_nowait()

    def get_nowait(self) -> Job:
        priority, normal = self._lanes[Lane.PRIORITY], self._lanes[Lane.NORMAL]
        lane = self._picker.pick(priority_waiting=bool(priority), normal_waiting=bool(normal))
        if lane is None:
            raise asyncio.QueueEmpty
        job = self._lanes[lane].popleft()
        room = self._room[lane]
        if not room.is_set():
            room.set()
        return job

    def _wake_next(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return
