# ruff: noqa: F811 - pytest fixtures imported from test_bot_e2e are parameters here
"""End to end: the bot as a curator's tool (/add, /remove, /undo, /review), feedback and browse
buttons, and fair share - real bot, fake Bot API, real engine on a private copy of the collection.

Every wait is for an event (a recorded call, a handled update or button press), never a sleep.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.app import build_application
from tests.bot_helpers import ADMIN, USER, Handled, bot_settings, jpeg, media_captions, running
from tests.fake_telegram import FakeTelegram
from tests.helpers import make_image
from tests.test_bot_e2e import (  # noqa: F401 - fixtures
    Bot,
    GateFactory,
    World,
    answers,
    bot,
    collection_photo,
    gated,
    own_bot,
    own_world,
    reply_to,
    tg,
    world,
)


def buttons(tg: FakeTelegram, chat_id: int, message_id: int) -> dict[str, str]:
    """Button text -> callback data of a message as it is now (edits applied)."""
    message = tg.message(chat_id, message_id) or {}
    rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return {b["text"]: b["callback_data"] for row in rows for b in row}


def photos(root: Path) -> set[Path]:
    return {p for p in root.rglob("*.jpg") if ".trash" not in p.parts}


async def press(bot: Bot, chat_id: int, message_id: int, data: str, **kw: Any) -> str:
    """Press a button; returns the toast text of the bot's answerCallbackQuery ('' if none)."""
    assert len(data.encode()) <= 64
    query = bot.tg.send_callback_query(chat_id, message_id, data, **kw)
    answer = await bot.tg.wait_for(
        "answerCallbackQuery", lambda c: c.params.get("callback_query_id") == query["id"]
    )
    await bot.handled.wait_query(query)
    return str(answer.params.get("text") or "")


async def text_reply(bot: Bot, message: dict) -> str:
    return (await reply_to(bot.tg, message)).result["text"]


def new_photo(seed: int = 4242) -> bytes:
    image = make_image(seed, size=(160, 120))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


# --- /add ---------------------------------------------------------------------------------------


async def test_add_as_caption_is_searchable_at_once_without_a_scan(
    own_bot: Bot, own_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    tg, root = own_bot.tg, own_world.root
    monkeypatch.setattr("core.indexer.scan_collection_report", _no_scan)
    data = new_photo()
    before = photos(root)
    sent = tg.send_user_message(ADMIN, photo=data, caption="/add vulpes VULPES", username="cur")
    text = await text_reply(own_bot, sent)
    assert "Added to Vulpes vulpes: 5 photo(s)" in text, text
    (saved,) = photos(root) - before
    assert saved.parent.name == "Vulpes_vulpes"
    with Image.open(saved) as image:
        assert image.format == "JPEG" and "exif" not in image.info
    side = json.loads(saved.with_suffix(".json").read_text())
    assert side["added_by"] == {"id": ADMIN, "username": "cur"} and side["chat_id"] == ADMIN
    assert side["added_at"]
    await own_bot.handled.wait(sent)
    assert not tg.calls("sendMediaGroup")  # /add is not also answered as a query photo
    query = tg.send_user_message(USER, photo=data, caption="/similar")
    album = await reply_to(tg, query, "sendMediaGroup")
    # the photo as stored (re-encoded as JPEG, EXIF dropped) comes first, all but identical
    first = media_captions(album)[0]
    assert first.startswith("<i>Vulpes vulpes</i>: ") and first.endswith("% similar"), first
    assert int(first.split(": ")[1].removesuffix("% similar")) >= 99, first
    stats = tg.send_user_message(ADMIN, text="/stats")
    text = await text_reply(own_bot, stats)
    assert "Photos: 13" in text and "Curation: 1 added, 0 removed" in text
    user_stats = tg.send_user_message(USER, text="/stats")
    assert "Curation" not in await text_reply(own_bot, user_stats)


async def test_add_unknown_name_asks_and_button_pressed_twice(
    own_bot: Bot, own_world: World
) -> None:
    tg, root = own_bot.tg, own_world.root
    photo = tg.send_user_message(ADMIN, photo=new_photo(1))
    await reply_to(tg, photo, "sendMediaGroup")
    command = tg.send_user_message(
        ADMIN, text="/add Lynx lynx", reply_to_message_id=photo["message_id"]
    )
    question = (await reply_to(tg, command)).result
    assert "no species Lynx lynx" in question["text"]
    keys = buttons(tg, ADMIN, question["message_id"])
    assert set(keys) == {"➕ Add as new: Lynx lynx", "✖️ Cancel"}
    assert not (root / "Lynx_lynx").exists()
    assert (
        await press(own_bot, ADMIN, question["message_id"], keys["➕ Add as new: Lynx lynx"]) == ""
    )
    done = await tg.wait_for("sendMessage", lambda c: "Added to" in (c.text or ""))
    assert "Added to Lynx lynx: 1 photo(s)" in done.result["text"]
    assert not buttons(tg, ADMIN, question["message_id"])  # the question's buttons are gone
    again = await press(own_bot, ADMIN, question["message_id"], keys["➕ Add as new: Lynx lynx"])
    assert again == "Already done."
    assert len(list((root / "Lynx_lynx").glob("*.jpg"))) == 1
    # a misspelt known species: "did you mean"
    typo = tg.send_user_message(ADMIN, photo=new_photo(2), caption="/add Canis lupis")
    question = (await reply_to(tg, typo)).result
    keys = buttons(tg, ADMIN, question["message_id"])
    await press(own_bot, ADMIN, question["message_id"], keys["Did you mean Canis lupus?"])
    done = await tg.wait_for("sendMessage", lambda c: "Added to" in (c.text or ""))
    assert "Added to Canis lupus: 5 photo(s)" in done.result["text"]
    assert not (root / "Canis_lupis").exists()
    # cancel adds nothing; a non-admin cannot press an admin's button
    third = tg.send_user_message(ADMIN, photo=new_photo(3), caption="/add Lynx pardinus")
    question = (await reply_to(tg, third)).result
    keys = buttons(tg, ADMIN, question["message_id"])
    refused = await press(own_bot, ADMIN, question["message_id"], keys["✖️ Cancel"], user_id=USER)
    assert "only the bot's admins" in refused
    await press(own_bot, ADMIN, question["message_id"], keys["✖️ Cancel"])
    assert "nothing was added" in (await tg.wait_for("sendMessage", for_text("Cancelled"))).text
    assert not (root / "Lynx_pardinus").exists()


def for_text(fragment: str):
    return lambda call: fragment in (call.text or "")


async def test_add_bad_input_gets_one_clear_reply_and_writes_nothing(
    own_bot: Bot, own_world: World
) -> None:
    tg, root = own_bot.tg, own_world.root
    before = set(root.rglob("*"))
    cases = [
        (USER, {"photo": new_photo(), "caption": "/add Vulpes vulpes"}, "only the bot's admins"),
        (USER, {"text": "/add Vulpes vulpes"}, "only the bot's admins"),
        (ADMIN, {"text": "/add Vulpes vulpes"}, "as the caption of a photo"),
        (ADMIN, {"photo": new_photo(), "caption": "/add"}, "Name the species"),
        (
            ADMIN,
            {"photo": new_photo(), "caption": "/add <b>Vulpes</b> vulpes"},
            "is not a valid scientific name",
        ),
        (ADMIN, {"photo": new_photo(), "caption": "/add Vulpes " + "v" * 500}, "is not a valid"),
        (
            ADMIN,
            {
                "document": (b"%PDF-1.4", "a.pdf", "application/pdf"),
                "caption": "/add Vulpes vulpes",
            },
            "not an image",
        ),
    ]
    for chat, message, expected in cases:
        sent = tg.send_user_message(chat, **message)
        replies = [await text_reply(own_bot, sent)]
        await own_bot.handled.wait(sent)
        replies += [c.text for c in tg.calls("sendMessage") if answers(sent)(c)][1:]
        assert len(replies) == 1 and expected in replies[0], (message.get("caption"), replies)
        sent_html = [c.params["text"] for c in tg.calls("sendMessage") if answers(sent)(c)]
        assert "<b>Vulpes" not in sent_html[0] and len(replies[0]) < 300  # escaped, shortened
    assert set(root.rglob("*")) == before
    assert not tg.calls("sendMediaGroup")


# --- /remove and /undo --------------------------------------------------------------------------


async def test_remove_album_photo_then_undo_also_after_restart(
    own_world: World, tg: FakeTelegram, tmp_path: Path
) -> None:
    root, engine = own_world.root, own_world.engine
    settings = bot_settings(own_world.settings, tg, tmp_path / "state")
    target = collection_photo(own_world, "Felis_catus", 1)
    async with running(build_application(settings, engine)) as app:
        sent = tg.send_user_message(ADMIN, photo=target.read_bytes(), caption="/similar")
        album = (await reply_to(tg, sent, "sendMediaGroup")).result
    first = album[0]  # the photo itself, 100% similar
    async with running(build_application(settings, engine)) as app:  # a restarted bot
        bot = Bot(tg, settings, engine, Handled(app))
        refused = tg.send_user_message(
            USER, text="/remove", chat_type="private", reply_to_message_id=None
        )
        assert "only the bot's admins" in await text_reply(bot, refused)
        not_album = tg.send_user_message(
            ADMIN, text="/remove", reply_to_message_id=sent["message_id"]
        )
        assert "Reply /remove to one of my album photos" in await text_reply(bot, not_album)
        remove = tg.send_user_message(
            ADMIN, text="/remove", reply_to_message_id=first["message_id"]
        )
        text = await text_reply(bot, remove)
        assert "Removed a photo of Felis catus (3 left)" in text and "/undo" in text
        assert not target.exists()
        trashed = root / ".trash" / "Felis_catus" / target.name
        assert trashed.is_file() and engine.stats()["total_images"] == 11
        twice = tg.send_user_message(ADMIN, text="/remove", reply_to_message_id=first["message_id"])
        assert "no longer in the collection" in await text_reply(bot, twice)
        undo = tg.send_user_message(ADMIN, text="/undo")
        assert "Restored the photo of Felis catus (4 now)" in await text_reply(bot, undo)
        assert target.is_file() and not trashed.exists()
        assert engine.stats()["total_images"] == 12
        again = tg.send_user_message(ADMIN, text="/undo")
        assert "Nothing to undo" in await text_reply(bot, again)
        stats = tg.send_user_message(ADMIN, text="/stats")
        assert "0 added, 1 removed, 1 undone" in await text_reply(bot, stats)
        query = tg.send_user_message(USER, photo=target.read_bytes(), caption="/similar")
        album = await reply_to(tg, query, "sendMediaGroup")
        assert media_captions(album)[0] == "<i>Felis catus</i>: 100% similar"


async def test_remove_photo_gone_in_a_reindex(own_bot: Bot, own_world: World) -> None:
    tg = own_bot.tg
    target = collection_photo(own_world, "Canis_lupus", 2)
    sent = tg.send_user_message(ADMIN, photo=target.read_bytes(), caption="/similar")
    album = (await reply_to(tg, sent, "sendMediaGroup")).result
    target.unlink()
    await asyncio.to_thread(own_bot.engine.reindex, train="skip")
    remove = tg.send_user_message(ADMIN, text="/remove", reply_to_message_id=album[0]["message_id"])
    assert "no longer in the collection" in await text_reply(own_bot, remove)
    assert not (own_world.root / ".trash").exists()


# --- feedback and review ------------------------------------------------------------------------


async def test_feedback_right_wrong_and_review_adds_the_correction(
    own_world: World, tg: FakeTelegram, tmp_path: Path
) -> None:
    engine, root = own_world.engine, own_world.root
    settings = bot_settings(own_world.settings, tg, tmp_path / "state")
    fox = collection_photo(own_world).read_bytes()
    async with running(build_application(settings, engine)) as app:
        bot = Bot(tg, settings, engine, Handled(app))
        first = tg.send_user_message(USER, photo=fox)
        answer = (await reply_to(tg, first)).result
        await reply_to(tg, first, "sendMediaGroup")
        keys = buttons(tg, USER, answer["message_id"])
        assert {"✅ Right", "❌ Wrong", "➡️ More", "🐾 Only Vulpes vulpes"} <= set(keys)
        assert await press(bot, USER, answer["message_id"], keys["✅ Right"]) == "Thank you!"
        assert "✅ Right" not in buttons(tg, USER, answer["message_id"])
        twice = await press(bot, USER, answer["message_id"], keys["✅ Right"])
        assert "already recorded" in twice
        second = tg.send_user_message(USER, photo=jpeg(make_image(77)))
        wrong_answer = (await reply_to(tg, second)).result
        await reply_to(tg, second, "sendMediaGroup")
        keys = buttons(tg, USER, wrong_answer["message_id"])
        other = await press(bot, USER, wrong_answer["message_id"], keys["❌ Wrong"], user_id=ADMIN)
        assert "Only the person" in other
        pick = await press(bot, USER, wrong_answer["message_id"], keys["❌ Wrong"])
        assert "Which species" in pick
        candidates = buttons(tg, USER, wrong_answer["message_id"])
        assert "✅ Right" not in candidates and "➡️ More" in candidates
    async with running(build_application(settings, engine)) as app:  # after a restart
        bot = Bot(tg, settings, engine, Handled(app))
        typed = tg.send_user_message(
            USER, text="felis CATUS", reply_to_message_id=wrong_answer["message_id"]
        )
        assert "An admin will review Felis catus" in await text_reply(bot, typed)
        await bot.handled.wait(typed)
        after = buttons(tg, USER, wrong_answer["message_id"])
        assert not any(data.startswith("fb:") for data in after.values())
        denied = tg.send_user_message(USER, text="/review")
        assert "only the bot's admins" in await text_reply(bot, denied)
        review = tg.send_user_message(ADMIN, text="/review")
        assert "1 correction(s) waiting" in await text_reply(bot, review)
        item = await tg.wait_for("sendPhoto", lambda c: c.chat_id == ADMIN)
        assert "the user says Felis catus" in item.result["caption"]
        keys = buttons(tg, ADMIN, item.result["message_id"])
        before = len(list((root / "Felis_catus").glob("*.jpg")))
        await press(bot, ADMIN, item.result["message_id"], keys["✅ Add as Felis catus"])
        done = await tg.wait_for("sendMessage", for_text("Added to"))
        assert f"Added to Felis catus: {before + 1} photo(s)" in done.result["text"]
        again = await press(bot, ADMIN, item.result["message_id"], keys["✅ Add as Felis catus"])
        assert again == "Already reviewed."
        assert len(list((root / "Felis_catus").glob("*.jpg"))) == before + 1
        added = sorted((root / "Felis_catus").glob("*.json"))
        sidecar = json.loads(added[-1].read_text())
        assert sidecar["reported_by"]["id"] == USER and sidecar["added_by"]["id"] == ADMIN
        empty = tg.send_user_message(ADMIN, text="/review")
        assert "No corrections" in await text_reply(bot, empty)
        expired = await press(bot, USER, wrong_answer["message_id"], "fb:999999:y")
        assert "expired" in expired


# --- browsing further ---------------------------------------------------------------------------


async def test_browse_more_species_and_genus(bot_for_browse: Bot) -> None:
    bot = bot_for_browse
    tg = bot.tg
    sent = tg.send_user_message(USER, photo=bot.photo)  # type: ignore[attr-defined]
    answer = (await reply_to(tg, sent)).result
    await reply_to(tg, sent, "sendMediaGroup")
    mid = answer["message_id"]
    keys = buttons(tg, USER, mid)
    await press(bot, USER, mid, keys["➡️ More"])
    more = await tg.wait_for("sendMediaGroup", lambda c: answers(answer)(c))
    assert len(more.params["media"]) == 2  # 12 photos: 10 shown first, then the last 2
    assert await press(bot, USER, mid, keys["➡️ More"]) == "Already shown."
    keys = buttons(tg, USER, mid)
    assert keys["➡️ More"].endswith(":m20")
    await press(bot, USER, mid, keys["➡️ More"])
    assert "No more similar photos" in (await tg.wait_for("sendMessage", answers(answer))).text
    await press(bot, USER, mid, keys["🐾 Only Vulpes vulpes"])
    only = await tg.wait_for("sendMediaGroup", lambda c: answers(answer)(c))
    assert len(media_captions(only)) == 4
    assert all("Vulpes vulpes" in c for c in media_captions(only))
    await press(bot, USER, mid, keys["🧬 Same genus"])
    genus = await tg.wait_for("sendMediaGroup", lambda c: answers(answer)(c))
    assert all("Vulpes" in c for c in media_captions(genus))


@pytest.fixture
async def bot_for_browse(bot: Bot, world: World) -> Bot:
    bot.photo = collection_photo(world).read_bytes()  # type: ignore[attr-defined]
    return bot


# --- fair share ---------------------------------------------------------------------------------


async def test_third_photo_of_one_user_waits_in_the_queue(
    bot: Bot, world: World, gated: GateFactory
) -> None:
    tg = bot.tg
    gate = gated(bot.engine, "analyze")
    photo = collection_photo(world).read_bytes()
    first = tg.send_user_message(USER, photo=photo)
    second = tg.send_user_message(USER, photo=photo)
    await tg.wait_for_count("sendChatAction", 2, lambda c: c.chat_id == USER)
    third = tg.send_user_message(USER, photo=photo)
    queued = await reply_to(tg, third)
    assert "in the queue" in queued.params["text"]
    other = tg.send_user_message(2003, photo=photo)  # another user is not held up
    assert await asyncio.to_thread(gate.entered.wait, 10)
    gate.opened.set()
    for message in (first, second, third, other):
        await reply_to(tg, message, "sendMediaGroup", timeout=30)
    assert len([c for c in tg.calls("sendMessage") if "in the queue" in (c.text or "")]) == 1


def _no_scan(root: Path) -> list:
    raise AssertionError("adding one photo must not scan the collection")


# --- attribution and common names ---------------------------------------------------------------


async def test_album_credits_cc_by_photos_and_shows_common_names(
    own_bot: Bot, own_world: World
) -> None:
    tg, root = own_bot.tg, own_world.root
    fox = collection_photo(own_world)
    licence = {"licence": "CC BY-SA 4.0", "author": "Jane <Doe>", "source": "https://x.org/1"}
    fox.with_suffix(".json").write_text(json.dumps(licence))
    os.utime(fox, ns=(time.time_ns(), time.time_ns() + 10**9))  # re-read on the next index
    await asyncio.to_thread(own_bot.engine.reindex, train="skip")
    (root / "names.csv").write_text(
        "scientific_name,en,ru\nVulpes vulpes,Red fox,Обыкновенная лисица\n", encoding="utf-8"
    )
    sent = tg.send_user_message(USER, photo=fox.read_bytes())
    answer = (await reply_to(tg, sent)).result
    assert answer["text"].startswith("🐾 Vulpes vulpes:")
    assert answer["text"].endswith("Red fox · Wikipedia")
    links = [e["url"] for e in answer.get("entities", []) if e["type"] == "text_link"]
    assert links == ["https://en.wikipedia.org/wiki/Red_fox"]
    album = await reply_to(tg, sent, "sendMediaGroup")
    captions = media_captions(album)
    assert captions[0] == (
        "Red fox — <i>Vulpes vulpes</i>: 100% similar\n© Jane &lt;Doe&gt; · CC BY-SA 4.0"
    )
    assert sum("©" in c for c in captions) == 1
    ru = tg.send_user_message(USER, photo=fox.read_bytes(), language_code="ru")
    answer = (await reply_to(tg, ru)).result
    assert "Обыкновенная лисица · Wikipedia" in answer["text"]
    links = [e["url"] for e in answer.get("entities", []) if e["type"] == "text_link"]
    assert links and links[0].startswith("https://ru.wikipedia.org/wiki/")
