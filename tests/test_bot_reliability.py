"""Reliability of the bot's plumbing: retried requests, paged long replies, log configuration.

These run against the fake Bot API with a stub engine (no model), so they are fast; the same
behaviours are exercised end to end with the real engine in test_bot_e2e.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from telegram.error import BadRequest, NetworkError, RetryAfter

from bot.app import build_application
from bot.request import RetryingRequest, backoff
from bot.settings import load_settings
from tests.bot_helpers import USER, Handled, bot_settings, running
from tests.fake_telegram import DROPPED, TOKEN, FakeTelegram, _parse_html, _utf16_len

CHAT = 4343


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        server.add_chat(CHAT)
        yield server


def _retrying_bot(tg: FakeTelegram, **kwargs: object):
    request = RetryingRequest(base_delay=0.01, **kwargs)  # type: ignore[arg-type]
    return tg.bot(request=request)


# --- retries ---------------------------------------------------------------------------------


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n, 0.5, 4.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


async def test_every_kind_of_request_is_retried(
    tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.request")
    photo = (Path(__file__).parent / "bot_helpers.py").read_bytes()  # any bytes will do here
    tg.validate_images = False
    async with _retrying_bot(tg) as bot:
        tg.inject_error("sendMessage", status=500, times=2)
        message = await bot.send_message(CHAT, "hello")
        tg.drop_connection("editMessageText")
        tg.inject_error("editMessageText", status=504)
        await bot.edit_message_text("<b>edited</b>", CHAT, message.message_id, parse_mode="HTML")
        tg.drop_connection("sendPhoto")  # a multipart upload is sent again in full
        sent = await bot.send_photo(CHAT, photo)
        tg.inject_error("getFile", status=502)
        tg.inject_error("download", status=500)
        file = await bot.get_file(sent.photo[-1].file_id)
        assert bytes(await file.download_as_bytearray()) == photo
    assert [c.status for c in tg.calls("sendMessage")] == [500, 500, 200]
    assert [c.status for c in tg.calls("editMessageText")] == [DROPPED, 504, 200]
    sends = tg.calls("sendPhoto")
    assert [c.status for c in sends] == [DROPPED, 200] and sends[0].files and sends[1].uploads
    assert [c.status for c in tg.calls("getFile")] == [502, 200]
    assert [c.status for c in tg.calls("download")] == [500, 200]
    assert "retrying" in caplog.text and "sendMessage" in caplog.text
    assert TOKEN not in caplog.text and TOKEN.replace(":", "%3A") not in caplog.text


async def test_retries_are_bounded_and_only_for_transient_errors(tg: FakeTelegram) -> None:
    async with _retrying_bot(tg) as bot:
        tg.inject_error("sendMessage", status=500, times=4)
        with pytest.raises(NetworkError):
            await bot.send_message(CHAT, "lost")
        assert len(tg.calls("sendMessage")) == 4  # TRIES, then given up
        tg.inject_error("sendMessage", status=400)
        with pytest.raises(BadRequest):
            await bot.send_message(CHAT, "refused")
        assert len(tg.calls("sendMessage")) == 5  # a 400 is final
        tg.inject_error("sendMessage", status=429)
        with pytest.raises(RetryAfter):  # flood control is the rate limiter's job
            await bot.send_message(CHAT, "flood")
        assert len(tg.calls("sendMessage")) == 6


def test_application_uses_the_retrying_request(tmp_path: Path) -> None:
    settings = load_settings(
        _env_file=None,
        bot_state_dir=tmp_path,
        bot_token=SecretStr("1:abc"),
        telegram_api_url="http://127.0.0.1:9/bot",
    )
    app = build_application(settings, engine=object(), retry_delay=0.25)  # type: ignore[arg-type]
    assert isinstance(app.bot.request, RetryingRequest) and app.bot.request.base_delay == 0.25
    assert app.bot.request._media_write_timeout == 120  # album uploads


# --- long replies ----------------------------------------------------------------------------


class StubEngine:
    """Just what /species and /stats need."""

    def __init__(self, species: list[str]) -> None:
        self.names = species

    def is_indexed(self) -> bool:
        return True

    def species(self) -> list[str]:
        return self.names

    def stats(self) -> dict[str, object]:
        return {"total_images": 10 * len(self.names), "species_count": len(self.names)}


@pytest.mark.parametrize("count", [136, 400])
async def test_long_species_list_is_paged_into_valid_messages(
    tg: FakeTelegram, tmp_path: Path, count: int
) -> None:
    names = [f"Genusname{i:03d} speciesepithet-{'x' * (i % 7)} <{i}>" for i in range(count)]
    settings = bot_settings(load_settings(_env_file=None), tg, tmp_path / "state")
    app = build_application(settings, StubEngine(names), retry_delay=0.01)  # type: ignore[arg-type]
    handled = Handled(app)
    async with running(app):
        sent = tg.send_user_message(USER, text="/species")
        await handled.wait(sent)
    calls = tg.calls("sendMessage", chat_id=USER)
    assert calls and all(c.ok for c in calls), [c.error for c in calls]
    assert len(calls) >= 2
    texts = [c.result["text"] for c in calls]
    assert all(_utf16_len(text) <= 4096 for text in texts)
    assert texts[0].startswith(f"{count} species in the collection:")
    listed = [line[2:] for text in texts for line in text.split("\n") if line.startswith("• ")]
    assert listed == names  # every name, in order, none cut in two
    for call in calls:  # and every page is valid HTML on its own: each name in italics
        plain, entities = _parse_html(call.params["text"])
        assert sum(e["type"] == "italic" for e in entities) == plain.count("• ")


# --- logging ---------------------------------------------------------------------------------


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def test_log_level_setting_applies_to_kontrol_bot(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    root_level: None,
) -> None:
    import bot.app
    import core.engine
    from kontrol.cli import main

    served: list[bool] = []

    def serve(app: object, settings: object) -> None:
        served.append(logging.getLogger("bot.app").isEnabledFor(logging.INFO))

    monkeypatch.setattr(bot.app, "_serve", serve)
    monkeypatch.setattr(core.engine, "Engine", lambda settings: object())
    monkeypatch.setenv("KONTROL_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("KONTROL_LOG_LEVEL", "INFO")
    monkeypatch.setenv("KONTROL_BOT_STATE_DIR", str(tmp_path / "state"))
    logging.getLogger().setLevel(logging.WARNING)
    assert main(["bot"]) == 0
    assert served == [True]
    started = [r for r in caplog.records if r.getMessage().startswith("Starting the bot")]
    assert started and started[0].levelno == logging.INFO
    assert TOKEN not in caplog.text


def test_debug_flag_is_not_overridden_by_the_log_level(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, root_level: None
) -> None:
    import bot.app
    import core.engine
    from kontrol.cli import main

    levels: list[int] = []
    monkeypatch.setattr(bot.app, "_serve", lambda app, s: levels.append(logging.root.level))
    monkeypatch.setattr(core.engine, "Engine", lambda settings: object())
    monkeypatch.setenv("KONTROL_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("KONTROL_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("KONTROL_BOT_STATE_DIR", str(tmp_path / "state"))
    logging.getLogger().setLevel(logging.DEBUG)  # what `kontrol --debug` sets up
    main(["--debug", "bot"])
    assert levels == [logging.DEBUG]
