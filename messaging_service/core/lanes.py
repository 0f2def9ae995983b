"""The two lanes a request can travel in, and the pure rule for which lane a free worker serves."""

from __future__ import annotations

import enum


class Lane(enum.StrEnum):
    """Where a request came from: the priority topic or the requests topic."""

    PRIORITY = "priority"
    NORMAL = "normal"


LANES = (Lane.PRIORITY, Lane.NORMAL)


class LanePicker:
    """Serves the priority lane first, but at most ``share`` of the picks while normal waits.

    A smooth weighted round robin over the picks made while *both* lanes wait: with a share of
    0.9, nine priority requests then one normal one, evenly spread, for as long as both wait.
    When only one lane waits it is served and the round starts again, so a priority request
    arriving at a quiet moment (even behind a full normal queue) is always the next one taken.
    """

    __slots__ = ("_normal", "_priority", "_share")

    def __init__(self, share: float) -> None:
        if not 0 < share < 1:
            raise ValueError(f"the priority share must be between 0 and 1 (exclusive), not {share}")
        self._share = share
        self._priority = 0.0
        self._normal = 0.0

    @property
    def share(self) -> float:
        return self._share

    def pick(self, *, priority_waiting: bool, normal_waiting: bool) -> Lane | None:
        """The lane the next free worker takes from; None when neither waits."""
        if not (priority_waiting and normal_waiting):
            self._priority = self._normal = 0.0
            if priority_waiting:
                return Lane.PRIORITY
            return Lane.NORMAL if normal_waiting else None
        self._priority += self._share
        self._normal += 1.0 - self._share
        if self._priority >= self._normal:
            self._priority -= 1.0
            return Lane.PRIORITY
        self._normal -= 1.0
        return Lane.NORMAL
