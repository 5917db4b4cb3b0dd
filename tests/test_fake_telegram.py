"""Tests of the fake Bot API server, driven by python-telegram-bot's real Bot/Application/HTTP.

If these pass, end-to-end bot tests against the fake exercise the same wire format PTB uses
against api.telegram.org.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import io
import threading
import time
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from PIL import Image
from telegram import InputMediaPhoto, Update
from telegram.error import BadRequest, EndPointNotFound, Forbidden, RetryAfter
from telegram.ext import (
    AIORateLimiter,
    Application,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fake_telegram import (
    TOKEN,
    FakeTelegram,
    fake_telegram,
    fake_telegram_factory,
    polling,
)

__all__ = ["fake_telegram", "fake_telegram_factory"]  # fixtures, imported for pytest

CHAT = 4242


def _jpeg(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
async def bot(fake_telegram: FakeTelegram) -> AsyncIterator:
    fake_telegram.add_chat(CHAT)
    async with fake_telegram.bot() as bot:
        yield bot


def _seconds(value: int | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


async def test_get_me(fake_telegram: FakeTelegram, bot) -> None:
    me = await bot.get_me()
    assert me.is_bot and me.username == "kontrol_test_bot" and me.can_join_groups
    assert bot.token == TOKEN
    assert fake_telegram.calls("getMe")


async def test_application_polls_and_replies(fake_telegram: FakeTelegram) -> None:
    """Text, photo (download) and /classify-as-reply-to-photo through a polling Application."""

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.message.reply_text(
            f"<b>echo</b> {update.message.text}", parse_mode="HTML", do_quote=True
        )

    async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        file = await update.message.photo[-1].get_file()
        data = await file.download_as_bytearray()
        await update.message.reply_text(f"got {len(data)} bytes")

    async def classify(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        target = update.message.reply_to_message
        assert target is not None and target.photo
        await context.bot.send_chat_action(update.effective_chat.id, "typing")
        await update.message.reply_text(f"classify {target.photo[-1].file_id}")

    async def post_init(app: Application) -> None:
        await app.bot.set_my_commands([("classify", "Classify the photo replied to")])

    app = fake_telegram.application_builder().post_init(post_init).build()
    app.add_handler(CommandHandler("classify", classify))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    app.add_handler(MessageHandler(filters.PHOTO, photo))
    image = _jpeg(1600, 1200)
    async with polling(app):
        assert fake_telegram.commands[0]["command"] == "classify"
        sent = fake_telegram.send_user_message(CHAT, text="hello")
        call = await fake_telegram.wait_for("sendMessage", timeout=5)
        assert call.params["text"] == "<b>echo</b> hello"
        assert call.params["reply_parameters"]["message_id"] == sent["message_id"]
        assert call.result["text"] == "echo hello"
        assert call.result["entities"][0]["type"] == "bold"
        assert call.result["reply_to_message"]["text"] == "hello"

        msg = fake_telegram.send_user_message(CHAT, photo=image)
        assert [p["width"] for p in msg["photo"]] == [90, 320, 800, 1280]
        call = await fake_telegram.wait_for("sendMessage", timeout=5)
        assert call.params["text"] == f"got {len(image)} bytes"

        fake_telegram.send_user_message(
            CHAT, text="/classify", reply_to_message_id=msg["message_id"]
        )
        call = await fake_telegram.wait_for("sendMessage", timeout=5)
        assert call.params["text"] == f"classify {msg['photo'][-1]['file_id']}"
        assert fake_telegram.calls("sendChatAction", chat_id=CHAT)
    assert fake_telegram.bot_messages(CHAT)[0]["text"] == "echo hello"
    assert fake_telegram.pending_updates == 0
    assert any(c.method == "download" for c in fake_telegram.requests)


async def test_long_poll_returns_as_soon_as_update_is_queued(
    fake_telegram: FakeTelegram, bot
) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    deadline = time.monotonic() + 5
    while fake_telegram.parked_polls == 0:  # the poll is waiting on the server: wake it
        assert time.monotonic() < deadline, "getUpdates never parked"
        await asyncio.sleep(0.005)
    start = time.monotonic()
    fake_telegram.send_user_message(CHAT, text="/start")
    updates = await poll
    assert time.monotonic() - start < 1.0  # woken by the update, not by the 5 s timeout
    assert updates[0].message.text == "/start"
    assert updates[0].message.entities[0].type == "bot_command"
    # Without a higher offset the update is delivered again; with it, it is confirmed.
    again = await bot.get_updates(timeout=0)
    assert [u.update_id for u in again] == [updates[0].update_id]
    assert await bot.get_updates(offset=updates[0].update_id + 1, timeout=0) == ()
    assert fake_telegram.pending_updates == 0


async def test_media_group_upload_then_reuse(fake_telegram: FakeTelegram, bot) -> None:
    images = [_jpeg(color="red"), _jpeg(color="blue"), _jpeg(color="green")]
    first = await bot.send_media_group(
        CHAT, [InputMediaPhoto(img, caption=f"#{i}") for i, img in enumerate(images)]
    )
    call = await fake_telegram.wait_for("sendMediaGroup")
    assert len(call.uploads) == 3 and not call.reused_file_ids
    assert len(first) == 3 and len({m.media_group_id for m in first}) == 1
    file_ids = [m.photo[-1].file_id for m in first]
    assert len(set(file_ids)) == 3
    assert [fake_telegram.file_bytes(f) for f in file_ids] == images
    assert [m.caption for m in first] == ["#0", "#1", "#2"]
    assert [m.message_id for m in first] == [1, 2, 3]

    second = await bot.send_media_group(CHAT, [InputMediaPhoto(f) for f in file_ids])
    call = await fake_telegram.wait_for("sendMediaGroup")
    assert call.uploads == [] and call.reused_file_ids == file_ids
    assert [m.photo[-1].file_id for m in second] == file_ids

    with pytest.raises(BadRequest, match=r"(?i)wrong file identifier"):
        await bot.send_photo(CHAT, "AgACnope")


async def test_send_photo_and_document(fake_telegram: FakeTelegram, bot) -> None:
    message = await bot.send_photo(CHAT, _jpeg(), caption="cat", reply_to_message_id=None)
    assert fake_telegram.calls("sendPhoto")[0].uploads == ["photo"]
    again = await bot.send_photo(CHAT, message.photo[-1].file_id)
    assert again.photo[-1].file_id == message.photo[-1].file_id
    doc = await bot.send_document(CHAT, b"a,b\n1,2\n", filename="r.csv")
    assert doc.document.file_name == "r.csv"
    with pytest.raises(BadRequest, match=r"(?i)IMAGE_PROCESS_FAILED"):
        await bot.send_photo(CHAT, b"not an image")


async def test_get_file_download_roundtrip(fake_telegram: FakeTelegram, bot) -> None:
    data = bytes(range(256)) * 100
    file_id = fake_telegram.add_file(data)
    file = await bot.get_file(file_id)
    assert file.file_size == len(data)
    assert bytes(await file.download_as_bytearray()) == data

    big = fake_telegram.add_file(b"x", file_size=25 * 1024 * 1024)
    with pytest.raises(BadRequest, match=r"(?i)file is too big"):
        await bot.get_file(big)


async def test_file_url_token_colon_plain_or_percent_encoded(fake_telegram: FakeTelegram) -> None:
    file_id = fake_telegram.add_file(b"payload")
    async with fake_telegram.bot() as bot:
        path = (await bot.get_file(file_id)).file_path
    rel = path.rsplit("/", 2)[-2:]
    port = fake_telegram.port
    async with httpx.AsyncClient() as client:
        for token in (TOKEN, TOKEN.replace(":", "%3A")):
            url = f"http://127.0.0.1:{port}/file/bot{token}/{'/'.join(rel)}"
            response = await client.get(url)
            assert response.status_code == 200 and response.content == b"payload"
        wrong = await client.get(f"http://127.0.0.1:{port}/file/bot1:wrong/{'/'.join(rel)}")
        assert wrong.status_code == 404


async def test_retry_after_and_rate_limiter(fake_telegram: FakeTelegram, bot) -> None:
    fake_telegram.inject_error("sendMessage", status=429, retry_after=1)
    with pytest.raises(RetryAfter) as info:
        await bot.send_message(CHAT, "hi")
    assert _seconds(info.value.retry_after) == 1
    failed = await fake_telegram.wait_for("sendMessage", ok=False)
    assert failed.status == 429 and failed.error["parameters"] == {"retry_after": 1}

    fake_telegram.inject_error("sendMessage", status=429, retry_after=1)
    app = (
        fake_telegram.application_builder()
        .rate_limiter(AIORateLimiter(max_retries=2))
        .updater(None)
        .build()
    )
    async with app:
        start = time.monotonic()
        message = await app.bot.send_message(CHAT, "hi again")
        assert time.monotonic() - start >= 1.0
    assert message.text == "hi again"
    assert [c.status for c in fake_telegram.calls("sendMessage")] == [429, 429, 200]


async def test_other_injected_errors(fake_telegram: FakeTelegram, bot) -> None:
    fake_telegram.inject_error("sendMessage", status=400, description="Bad Request: nope")
    with pytest.raises(BadRequest, match=r"(?i)nope"):
        await bot.send_message(CHAT, "x")
    fake_telegram.block_chat(CHAT)
    with pytest.raises(Forbidden, match=r"(?i)blocked"):
        await bot.send_message(CHAT, "x")
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await bot.send_message(999, "x")


async def test_edit_message_text(fake_telegram: FakeTelegram, bot) -> None:
    message = await bot.send_message(CHAT, "working…")
    edited = await bot.edit_message_text(
        "done: <i>cat</i>", CHAT, message.message_id, parse_mode="HTML"
    )
    assert edited.text == "done: cat" and edited.edit_date is not None
    assert fake_telegram.message(CHAT, message.message_id)["text"] == "done: cat"
    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await bot.edit_message_text("done: <i>cat</i>", CHAT, message.message_id, parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
        await bot.edit_message_text("x", CHAT, 9999)


async def test_validation_like_telegram(fake_telegram: FakeTelegram, bot) -> None:
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
        await bot.send_message(CHAT, "p < 0.05", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(CHAT, "x" * 4097)
    with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
        await bot.send_message(CHAT, "x", reply_to_message_id=777)
    assert await bot.set_my_commands([("classify", "Classify a photo")])
    assert fake_telegram.commands == [{"command": "classify", "description": "Classify a photo"}]
    assert await bot.send_chat_action(CHAT, "upload_photo")
    with pytest.raises(EndPointNotFound):
        await bot.do_api_request("frobnicate")
    assert fake_telegram.unknown_methods == ["frobnicate"]


async def test_latency_and_flood_limits(fake_telegram_factory) -> None:
    tg = fake_telegram_factory(latency={"sendMessage": 0.2}, chat_rate_limit=(2, 60))
    tg.add_chat(CHAT)
    async with tg.bot() as bot:
        start = time.monotonic()
        await bot.send_message(CHAT, "1")
        assert time.monotonic() - start >= 0.2
        await bot.send_message(CHAT, "2")
        with pytest.raises(RetryAfter):
            await bot.send_message(CHAT, "3")


async def test_server_keeps_serving_while_the_test_loop_is_blocked(
    fake_telegram: FakeTelegram,
) -> None:
    """The server has its own thread and loop: a bot blocking its loop can't stall it too."""
    done: list[float] = []

    def get_me() -> None:
        httpx.get(f"{fake_telegram.base_url}{TOKEN}/getMe").raise_for_status()
        done.append(time.monotonic())

    thread = threading.Thread(target=get_me)
    start = time.monotonic()
    thread.start()
    time.sleep(0.5)  # deliberately blocks this event loop
    blocked_until = time.monotonic()
    thread.join(5)
    assert done and done[0] < blocked_until, "server answered only after the loop unblocked"
    assert done[0] - start < 0.5


async def test_user_message_variants_parse_in_ptb(fake_telegram: FakeTelegram, bot) -> None:
    """Bad-input kinds the bot must handle arrive as the PTB objects it will filter on."""
    tg = fake_telegram
    tg.send_user_message(CHAT, document=(_jpeg(), "cat.jpg", "image/jpeg"), caption="/classify")
    tg.send_user_message(CHAT, video=b"\0" * 100)
    tg.send_user_message(CHAT, animation=b"GIF89a")
    tg.send_user_message(CHAT, sticker=b"RIFF")
    tg.send_user_message(CHAT, photo=_jpeg(), file_size=25 * 1024 * 1024)
    group = tg.send_user_message(
        -100500, user_id=7, text="/start@kontrol_test_bot", chat_type="supergroup"
    )
    sent = await bot.send_message(CHAT, "pick", reply_markup=None)
    tg.send_callback_query(CHAT, sent.message_id, "page:2")
    updates = await bot.get_updates(timeout=0)
    doc, video, anim, sticker, photo, grp, cbq = updates
    assert doc.message.document.file_name == "cat.jpg"
    assert doc.message.caption_entities[0].type == "bot_command"
    assert filters.Document.IMAGE.check_update(doc)
    assert video.message.video and not filters.PHOTO.check_update(video)
    assert anim.message.animation and sticker.message.sticker
    assert photo.message.photo[-1].file_size == 25 * 1024 * 1024
    assert grp.message.chat.type == "supergroup" and grp.message.from_user.id == 7
    assert grp.message.message_id == group["message_id"]
    assert cbq.callback_query.data == "page:2"
    assert await cbq.callback_query.answer("ok")
    assert tg.callback_answers[0]["text"] == "ok"


async def test_many_concurrent_requests(fake_telegram: FakeTelegram) -> None:
    """Load smoke test: 50 chats x 20 messages at once, and wait_for_count over all of them.

    Uses aiohttp as the client because httpx (PTB's client) itself slows down sharply with
    hundreds of queued requests; this measures the server.
    """
    chats = list(range(1, 51))
    for chat in chats:
        fake_telegram.add_chat(chat)
    url = f"{fake_telegram.base_url}{TOKEN}/sendMessage"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:

        async def send(chat: int, i: int) -> int:
            async with session.post(url, data={"chat_id": str(chat), "text": f"m{i}"}) as r:
                await r.read()
                return r.status

        start = time.monotonic()
        statuses = await asyncio.gather(*(send(c, i) for i in range(20) for c in chats))
        elapsed = time.monotonic() - start
    assert set(statuses) == {200}
    calls = await fake_telegram.wait_for_count("sendMessage", 1000, timeout=2)
    assert len(calls) == 1000
    assert [m["message_id"] for m in fake_telegram.bot_messages(7)] == list(range(1, 21))
    print(f"1000 sendMessage in {elapsed:.2f}s = {1000 / elapsed:.0f} req/s")
