"""One shape for the service's resources: leaving ``async with`` awaits ``close()``."""

from __future__ import annotations

from types import TracebackType


class ClosedOnExit:
    """Mixin: ``async with resource:`` ends by awaiting ``resource.close()``, however it ends.

    Subclasses write their own ``__aenter__`` (what starting means differs from one resource to
    the next) and an idempotent ``close`` that ``app.py``'s exit stack and tests can call too.
    """

    async def close(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
