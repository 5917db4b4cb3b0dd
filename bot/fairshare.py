"""Fair share: each user has at most a few photos in the works at once.

Someone who sends thirty photos in a row must not take every worker while other chats wait: their
third photo waits for one of their own to finish (and they are told it is queued), while other
users' photos go ahead. Only touched on the event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

#: Photos one user may have in progress at the same time.
PER_USER = 2


class FairShare:
    def __init__(self, limit: int = PER_USER) -> None:
        self.limit = max(1, limit)
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._holders: dict[int, int] = {}

    @contextlib.asynccontextmanager
    async def slot(
        self, user_id: int | None, on_wait: Callable[[], Awaitable[object]]
    ) -> AsyncIterator[None]:
        """Hold one of the user's slots; `on_wait` runs once first if the user has none free."""
        if user_id is None:
            yield
            return
        sem = self._slots.setdefault(user_id, asyncio.Semaphore(self.limit))
        self._holders[user_id] = self._holders.get(user_id, 0) + 1
        try:
            if sem.locked():
                await on_wait()
            async with sem:
                yield
        finally:
            self._holders[user_id] -= 1
            if not self._holders[user_id]:
                del self._holders[user_id], self._slots[user_id]
