"""Start-up failures of the bot are one clear sentence for the operator, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bot.app import run_bot
from bot.settings import load_settings
from core.engine import Engine
from core.errors import ConfigError
from tests.fake_telegram import FakeTelegram
from tests.helpers import TinyEmbedder


def _settings(tmp_path: Path, **kw: object):
    return load_settings(
        images_dir=tmp_path / "photos",
        index_dir=tmp_path / "idx",
        bot_state_dir=tmp_path / "s",
        **kw,
    )


def test_rejected_token_is_explained(tmp_path: Path, fake_telegram: FakeTelegram) -> None:
    wrong = "999:WRONG-token-zzz"
    settings = _settings(
        tmp_path,
        bot_token=wrong,
        telegram_api_url=fake_telegram.base_url,
        telegram_file_url=fake_telegram.base_file_url,
    )
    with pytest.raises(ConfigError, match="rejected KONTROL_BOT_TOKEN") as err:
        run_bot(settings, engine=Engine(settings, embedder=TinyEmbedder()))
    assert wrong not in str(err.value)


def test_unreachable_api_is_explained(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "123:SECRET-token-abc"
    settings = _settings(tmp_path, bot_token=token, telegram_api_url=f"http://127.0.0.1:{port}/bot")
    with pytest.raises(ConfigError, match="Cannot reach the Telegram Bot API") as err:
        run_bot(settings, engine=Engine(settings, embedder=TinyEmbedder()))
    assert token not in str(err.value)
