"""Helpers for the bot's end-to-end tests: run the real Application against the fake Bot API."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import SecretStr
from telegram import Update
from telegram.ext import Application, ContextTypes, TypeHandler

from bot.settings import BotSettings
from core.settings import Settings
from tests.fake_telegram import TOKEN, Call, FakeTelegram

ADMIN = 777
USER = 1001


def bot_settings(base: Settings, tg: FakeTelegram, state_dir: Path, **extra: Any) -> BotSettings:
    """`base` (engine or bot settings) as bot settings pointed at the fake server, with its own
    bot state directory."""
    update: dict[str, Any] = {
        "bot_token": SecretStr(TOKEN),
        "telegram_api_url": tg.base_url,
        "telegram_file_url": tg.base_file_url,
        "bot_state_dir": state_dir,
        "admin_ids": [ADMIN],
        **extra,
    }
    if not isinstance(base, BotSettings):
        base = BotSettings.model_construct(**{**BotSettings().model_dump(), **base.model_dump()})
    return base.model_copy(update=update)


@contextlib.asynccontextmanager
async def running(app: Application) -> AsyncIterator[Application]:
    """Start `app` the way `run_polling` does (post_init included), stop it afterwards."""
    await app.initialize()
    if app.post_init:
        await app.post_init(app)
    await app.updater.start_polling(poll_interval=0, timeout=2)
    await app.start()
    try:
        yield app
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def animated_gif(size: tuple[int, int] = (64, 64)) -> bytes:
    frames = [Image.new("RGB", size, color) for color in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def replying_to(message_id: int) -> Callable[[Call], bool]:
    """Predicate: the call replies to `message_id`."""

    def check(call: Call) -> bool:
        reply = call.params.get("reply_parameters") or {}
        return reply.get("message_id") == message_id

    return check


def for_chat(chat_id: int) -> Callable[[Call], bool]:
    return lambda call: call.chat_id == chat_id


def media_captions(call: Call) -> list[str]:
    return [item.get("caption", "") for item in call.params["media"]]


class Gate:
    """Make a blocking engine method wait (in its worker thread) until the test opens the gate."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.entered.set()
        if not self.opened.wait(30):
            raise TimeoutError("gate never opened")
        return self.func(*args, **kwargs)


class Handled:
    """Tells when the bot has completely handled a user's message, all handler groups done.

    A `TypeHandler` in a group after the bot's own runs once the bot's handler for the update has
    returned, so "the bot did nothing" can be asserted without sleeping: wait until the message is
    handled, then check that no reply was recorded.
    """

    GROUP = 10_000

    def __init__(self, app: Application) -> None:
        self._done: set[tuple[int, int]] = set()
        self._queries: set[str] = set()
        self._event = asyncio.Event()
        app.add_handler(TypeHandler(Update, self._record), group=self.GROUP)

    async def _record(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if update.callback_query is not None:
            self._queries.add(update.callback_query.id)
            self._event.set()
            return
        message = update.effective_message
        if message is not None:
            self._done.add((message.chat_id, message.message_id))
            self._event.set()

    async def wait_query(self, query: dict[str, Any], timeout: float = 10.0) -> None:
        """Return once the button press `query` (from `send_callback_query`) was handled."""
        async with asyncio.timeout(timeout):
            while query["id"] not in self._queries:
                self._event.clear()
                await self._event.wait()

    async def wait(self, message: dict[str, Any], timeout: float = 10.0) -> None:
        """Return once the update carrying `message` (a fake server message dict) was handled."""
        key = (message["chat"]["id"], message["message_id"])
        async with asyncio.timeout(timeout):
            while key not in self._done:
                self._event.clear()
                await self._event.wait()
