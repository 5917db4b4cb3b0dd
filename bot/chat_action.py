"""Keep a chat action ("uploading photo…") visible for as long as slow work runs.

Telegram shows an action for about 5 s, so it is re-sent every few seconds until the work ends.
The first one is sent before the work starts, so even a fast answer is announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from telegram import Bot
from telegram.error import TelegramError

log = logging.getLogger(__name__)


async def _send(bot: Bot, chat_id: int, action: str) -> None:
    try:
        await bot.send_chat_action(chat_id=chat_id, action=action)
    except TelegramError as exc:  # cosmetic: never fail the real work over it
        log.debug("Chat action %s failed: %s", action, exc)


@contextlib.asynccontextmanager
async def chat_action(
    bot: Bot, chat_id: int, action: str, interval: float = 4.0
) -> AsyncIterator[None]:
    """Show `action` in `chat_id` now and every `interval` seconds until the block exits."""
    await _send(bot, chat_id, action)

    async def repeat() -> None:
        while True:
            await asyncio.sleep(interval)
            await _send(bot, chat_id, action)

    task = asyncio.create_task(repeat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
