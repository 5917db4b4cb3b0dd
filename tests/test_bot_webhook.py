"""Webhook mode: python-telegram-bot's real webhook server, fed like Telegram feeds it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx

from bot.app import build_application, webhook_options
from bot.settings import load_settings
from core.engine import Engine
from tests.fake_telegram import FakeTelegram
from tests.helpers import TinyEmbedder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_webhook_answers_updates_and_checks_the_secret(
    tmp_path: Path, fake_telegram: FakeTelegram
) -> None:
    port = _free_port()
    settings = load_settings(
        images_dir=tmp_path / "photos",
        index_dir=tmp_path / "idx",
        bot_state_dir=tmp_path / "state",
        bot_token=fake_telegram.token,
        telegram_api_url=fake_telegram.base_url,
        telegram_file_url=fake_telegram.base_file_url,
        bot_mode="webhook",
        webhook_url="https://bot.example.org/kontrol/hook",
        webhook_secret="s3cret-value",
        webhook_listen="127.0.0.1",
        webhook_port=port,
    )
    app = build_application(settings, Engine(settings, embedder=TinyEmbedder()))
    options = webhook_options(settings)
    assert options["url_path"] == "kontrol/hook"
    async with app:
        await app.start()
        await app.updater.start_webhook(**options)
        try:
            set_hook = await fake_telegram.wait_for("setWebhook", timeout=10)
            assert set_hook.params["url"] == "https://bot.example.org/kontrol/hook"
            assert set_hook.params["secret_token"] == "s3cret-value"
            message = fake_telegram.send_user_message(77, text="/help")
            update = json.dumps({"update_id": 900001, "message": message})
            url = f"http://127.0.0.1:{port}/kontrol/hook"
            headers = {"Content-Type": "application/json"}
            async with httpx.AsyncClient() as client:
                forged = await client.post(
                    url,
                    content=update,
                    headers={**headers, "X-Telegram-Bot-Api-Secret-Token": "no"},
                )
                assert forged.status_code == 403
                real = await client.post(
                    url,
                    content=update,
                    headers={**headers, "X-Telegram-Bot-Api-Secret-Token": "s3cret-value"},
                )
                assert real.status_code == 200
            reply = await fake_telegram.wait_for(
                "sendMessage", lambda c: c.chat_id == 77, timeout=10
            )
            assert "/similar" in reply.params["text"]
            assert len(fake_telegram.calls("sendMessage", chat_id=77)) == 1  # forged one ignored
        finally:
            await app.updater.stop()
            await app.stop()
