"""The bot's building blocks on their own: texts, token redaction, caches, settings checks."""

from __future__ import annotations

import io
import json
import logging
import re
import string
from pathlib import Path

import pytest
from PIL import Image
from pydantic import SecretStr

from bot import i18n
from bot.app import build_application, check_settings, run_bot
from bot.file_ids import FileIdStore
from bot.formatting import album_caption, classification_text, percent
from bot.logsafe import REDACTED, protect_secret
from bot.paging import fit_html, plain_length, split_html
from bot.photo import CAPTION_COMMAND
from bot.settings import load_settings
from bot.thumbs import PhotoKey, ThumbnailCache, render_jpeg
from core.errors import ConfigError
from tests.fake_telegram import _parse_html, _utf16_len


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_message_tables_match() -> None:
    assert i18n.EN.keys() == i18n.RU.keys()
    for key in i18n.EN:
        assert _fields(i18n.EN[key]) == _fields(i18n.RU[key]), key


def test_language_choice_and_escaping() -> None:
    class User:
        def __init__(self, code: str | None) -> None:
            self.language_code = code

    assert i18n.lang_of(User("ru")) == "ru" and i18n.lang_of(User("ru-RU")) == "ru"
    assert i18n.lang_of(User("en")) == "en" and i18n.lang_of(User(None)) == "en"
    assert i18n.lang_of(None) == "en"
    text = i18n.t("en", "album_caption", species="<script>", similarity="5%")
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_not_sure_shows_candidates_and_marked_fallback() -> None:
    result = {
        "species": None,
        "confidence": 0.3,
        "probabilities": {"Canis lupus": 0.3, "Vulpes vulpes": 0.25},
        "fallback": {
            "species": "Vulpes vulpes",
            "common_name": "red fox",
            "confidence": 0.41,
            "source": "imagenet",
        },
    }
    text = classification_text("en", result, all_probabilities=False)
    assert text.startswith("🤔") and "Canis lupus" in text and "Vulpes vulpes" in text
    assert "ImageNet guess" in text and "red fox" in text and "41%" in text
    sure = classification_text(
        "en",
        {"species": "Canis lupus", "confidence": 0.9, "probabilities": {"Canis lupus": 0.9}},
        all_probabilities=False,
    )
    assert "Canis lupus" in sure and "90%" in sure and "candidates" not in sure


def test_percent_and_caption() -> None:
    assert percent(0.873) == "87%" and percent(0.051) == "5.1%" and percent(-0.2) == "0.0%"
    caption = album_caption("en", {"class": "Felis catus", "similarity": 0.9123})
    assert caption == "<i>Felis catus</i>: 91% similar"


def test_caption_command_pattern() -> None:
    match = CAPTION_COMMAND.match("/similar@kontrol_bot Canis lupus")
    assert match and match["command"] == "similar" and match["bot"] == "kontrol_bot"
    assert match["args"] == "Canis lupus"
    assert CAPTION_COMMAND.match("/classify")["args"] is None
    assert CAPTION_COMMAND.match("/classifying") is None
    assert CAPTION_COMMAND.match("look /classify") is None


def test_token_redacted_in_messages_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    token = "987654:unit-SECRET-token"
    protect_secret(token)
    log = logging.getLogger("bot.test")
    with caplog.at_level(logging.INFO):
        log.info("GET https://api.telegram.org/bot%s/getMe", token)
        log.info("download %s", "https://x/file/bot987654%3Aunit-SECRET-token/a.jpg")
        try:
            raise RuntimeError(f"failed for {token}")
        except RuntimeError:
            log.exception("boom")
    assert "unit-SECRET-token" not in caplog.text
    assert caplog.text.count(REDACTED) == 3  # message, percent-encoded arg, exception text


def test_file_id_store_persists_atomically(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    key = PhotoKey.of(photo)
    store = FileIdStore(tmp_path / "state")
    assert store.get(key) is None
    store.update({key: "AgAC-1"})
    again = FileIdStore(tmp_path / "state")
    assert again.get(key) == "AgAC-1"
    assert json.loads((tmp_path / "state" / "file_ids.json").read_text()) == {str(key): "AgAC-1"}
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".")]
    photo.write_bytes(b"changed")  # a new version of the file is a new key
    assert again.get(PhotoKey.of(photo)) is None
    again.forget([key])
    assert FileIdStore(tmp_path / "state").get(key) is None


def test_file_id_store_survives_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "file_ids.json").write_text("{not json")
    assert len(FileIdStore(tmp_path)) == 0


def test_thumbnails_fit_telegram_limits_and_are_cached(tmp_path: Path) -> None:
    big = tmp_path / "pano.png"
    Image.new("RGB", (6000, 200), "green").save(big)  # aspect 30: over Telegram's 20
    data = render_jpeg(big)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and max(image.size) <= 1280
        assert max(image.size) / min(image.size) <= 20
    cache = ThumbnailCache(tmp_path / "state")
    assert cache.get(big) == data
    cached = cache.path_for(PhotoKey.of(big))
    assert cached.is_file()
    cached.write_bytes(b"from cache")
    assert cache.get(big) == b"from cache"  # rendered once, read afterwards


def _settings(tmp_path: Path, **overrides: object):
    return load_settings(_env_file=None, bot_state_dir=tmp_path / "state", **overrides)


def test_missing_token_explains_botfather(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.compile("BotFather.*KONTROL_BOT_TOKEN", re.S)):
        run_bot(_settings(tmp_path))
    with pytest.raises(ConfigError, match="BotFather"):
        build_application(_settings(tmp_path, bot_token=" "), engine=None)  # type: ignore[arg-type]


def test_webhook_needs_url_and_secret(tmp_path: Path) -> None:
    token = SecretStr("1:abc")
    with pytest.raises(ConfigError, match="KONTROL_WEBHOOK_URL and KONTROL_WEBHOOK_SECRET"):
        check_settings(_settings(tmp_path, bot_token=token, bot_mode="webhook"))
    with pytest.raises(ConfigError, match="KONTROL_WEBHOOK_SECRET"):
        check_settings(
            _settings(tmp_path, bot_token=token, bot_mode="webhook", webhook_url="https://x/y")
        )
    ok = _settings(
        tmp_path,
        bot_token=token,
        bot_mode="webhook",
        webhook_url="https://example.org/hook",
        webhook_secret="s3cret",
    )
    assert check_settings(ok) == "1:abc"
    assert check_settings(_settings(tmp_path, bot_token=token)) == "1:abc"  # polling


def test_application_is_wired_for_concurrency_and_flood_control(tmp_path: Path) -> None:
    from telegram.ext import AIORateLimiter

    settings = _settings(
        tmp_path,
        bot_token=SecretStr("1:abc"),
        telegram_api_url="http://127.0.0.1:9/bot",
        telegram_file_url="http://127.0.0.1:9/file/bot",
    )
    app = build_application(settings, engine=object())  # type: ignore[arg-type]
    assert app.concurrent_updates > 1
    assert isinstance(app.bot.rate_limiter, AIORateLimiter)
    assert app.bot.base_url == "http://127.0.0.1:9/bot1:abc"
    assert logging.getLogger("httpx").level >= logging.WARNING


def _pages_ok(pages: list[str], limit: int) -> list[str]:
    """Each page parses as Telegram HTML (balanced tags) and fits; returns the plain texts."""
    plains = []
    for page in pages:
        plain, _ = _parse_html(page)
        assert 0 < _utf16_len(plain) <= limit and plain.strip(), page
        plains.append(plain)
    return plains


def test_split_html_keeps_short_texts_and_cuts_long_ones_on_lines() -> None:
    assert split_html("<b>short</b>") == ["<b>short</b>"]
    lines = [f"• <i>Species {i:03d}</i> &amp; co" for i in range(300)]
    text = "<b>Header</b>\n" + "\n".join(lines)
    pages = split_html(text, 1000)
    plains = _pages_ok(pages, 1000)
    assert len(pages) > 1
    assert "\n".join(plains) == _parse_html(text)[0]  # nothing lost, cut only at line ends


def test_split_html_reopens_tags_spanning_pages_and_cuts_overlong_lines() -> None:
    spanning = "<blockquote>" + "\n".join(f"line {i} 🐾" for i in range(100)) + "</blockquote>"
    pages = split_html(spanning, 200)
    _pages_ok(pages, 200)
    assert all(p.startswith("<blockquote>") and p.endswith("</blockquote>") for p in pages)
    emoji = "🐾" * 150  # 300 UTF-16 units in one line
    assert [plain_length(p) for p in split_html(emoji, 100)] == [100, 100, 100]
    words = "<i>" + " ".join(["word"] * 100) + " &lt;end&gt;</i>"
    pages = split_html(words, 60)
    plains = _pages_ok(pages, 60)
    assert "".join(plains).replace(" ", "") == _parse_html(words)[0].replace(" ", "")
    assert all(not p.startswith("ord") for p in plains)  # cut between words


def test_fit_html_marks_what_was_left_out() -> None:
    assert fit_html("<b>ok</b>", 10) == "<b>ok</b>"
    fitted = fit_html("<i>" + "x" * 50 + "</i>", 20)
    assert _utf16_len(_parse_html(fitted)[0]) <= 20 and fitted.endswith("…")
    long_caption = album_caption("en", {"class": "A" * 2000, "similarity": 0.5})
    assert _utf16_len(_parse_html(long_caption)[0]) <= 1024
