"""End to end: the real bot (python-telegram-bot's HTTP stack) + fake Bot API + real engine.

A dozen synthetic photos in three species folders are indexed once per module with the default
offline model; every test starts its own bot (own state directory) against its own fake server.
Tests that change the collection or re-index work on their own copy (`own_world`), so no test
depends on which ran before it. "The bot did nothing" is asserted once the update was handled
(`Handled`), never after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bot.app import build_application
from bot.settings import BotSettings as Settings
from bot.settings import load_settings
from core.engine import Engine
from tests.bot_helpers import (
    ADMIN,
    USER,
    Gate,
    Handled,
    animated_gif,
    bot_settings,
    for_chat,
    jpeg,
    media_captions,
    png,
    replying_to,
    running,
)
from tests.fake_telegram import DROPPED, TOKEN, Call, FakeTelegram
from tests.helpers import make_collection, make_image

GateFactory = Callable[[object, str], Gate]
LAYOUT = {"Canis_lupus": 4, "Vulpes_vulpes": 4, "Felis_catus": 4}
SPECIES = {"Canis lupus", "Vulpes vulpes", "Felis catus"}


@dataclass
class World:
    settings: Settings
    engine: Engine
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Collection + index built once for the module (the engine is shared by all tests)."""
    base = tmp_path_factory.mktemp("bot-world")
    root = base / "collection"
    make_collection(root, LAYOUT)
    settings = load_settings(
        _env_file=None,
        images_dir=root,
        index_dir=base / "index",
        models_dir=base / "models",
        batch_size=4,
        top_k=10,
        # the test photos are coloured patterns, which the real backbone rightly takes for no
        # animal: the no-animal check is off here so the answers these tests read are named
        # (tests/test_no_animal.py checks it with the same model)
        classify_min_animal_share=0.0,
    )
    engine = Engine(settings)
    engine.reindex()
    return World(settings, engine, root)


@pytest.fixture
def own_world(world: World, tmp_path: Path) -> World:
    """A private copy of the collection and its index (same loaded model), free to change."""
    root, index = tmp_path / "collection", tmp_path / "index"
    shutil.copytree(world.root, root)
    shutil.copytree(world.settings.index_dir, index)
    settings = world.settings.model_copy(update={"images_dir": root, "index_dir": index})
    return World(settings, Engine(settings, embedder=world.engine.embedder), root)


@dataclass
class Bot:
    tg: FakeTelegram
    settings: Settings
    engine: Engine
    handled: Handled


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


@asynccontextmanager
async def serving(world: World, tg: FakeTelegram, state: Path) -> AsyncIterator[Bot]:
    settings = bot_settings(world.settings, tg, state)
    app = build_application(settings, world.engine, progress_interval=0.05, retry_delay=0.01)
    handled = Handled(app)
    async with running(app):
        yield Bot(tg, settings, world.engine, handled)


@pytest.fixture
async def bot(world: World, tg: FakeTelegram, tmp_path: Path) -> AsyncIterator[Bot]:
    async with serving(world, tg, tmp_path / "state") as served:
        yield served


@pytest.fixture
async def own_bot(own_world: World, tg: FakeTelegram, tmp_path: Path) -> AsyncIterator[Bot]:
    """A bot serving its own copy of the collection (`own_world`)."""
    async with serving(own_world, tg, tmp_path / "state") as served:
        yield served


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[GateFactory]:
    """Factory: replace `obj.name` by a Gate; every gate is opened at teardown (before the bot
    stops, as long as the test lists this fixture after `bot`)."""
    made: list[Gate] = []

    def make(obj: object, name: str) -> Gate:
        made.append(Gate(getattr(obj, name)))
        monkeypatch.setattr(obj, name, made[-1])
        return made[-1]

    yield make
    for g in made:
        g.opened.set()


def collection_photo(world: World, species: str = "Vulpes_vulpes", i: int = 0) -> Path:
    return sorted((world.root / species).glob("*.jpg"))[i]


def answers(message: dict) -> Callable[[Call], bool]:
    """Predicate: a call in the message's chat that replies to it (ids are per chat)."""
    chat_id, is_reply = message["chat"]["id"], replying_to(message["message_id"])
    return lambda call: call.chat_id == chat_id and is_reply(call)


async def reply_to(tg: FakeTelegram, message: dict, method: str = "sendMessage", **kw) -> Call:
    return await tg.wait_for(method, answers(message), **kw)


# --- photos -----------------------------------------------------------------------------------


async def test_photo_gets_species_and_album(bot: Bot, world: World) -> None:
    tg = bot.tg
    sent = tg.send_user_message(USER, photo=collection_photo(world).read_bytes())
    action = await tg.wait_for("sendChatAction", for_chat(USER))
    assert action.params["action"] == "upload_photo"
    text = (await reply_to(tg, sent)).result["text"]
    # a collection photo itself: the species is named (not "not sure"), and surely
    named = re.match(r"🐾 Vulpes vulpes: (\d+)% sure", text)
    assert named and int(named[1]) >= 80, text
    album = await reply_to(tg, sent, "sendMediaGroup")
    captions = media_captions(album)
    assert len(captions) == 10 == len(album.uploads)
    assert all("%" in c and any(s in c for s in SPECIES) for c in captions)
    assert captions[0] == "<i>Vulpes vulpes</i>: 100% similar"  # the photo itself
    # album photos are downscaled JPEG copies
    first = tg.file_bytes(album.result[0]["photo"][-1]["file_id"])
    assert first is not None and first[:2] == b"\xff\xd8"


async def test_image_sent_as_document(bot: Bot, world: World) -> None:
    data = png(Image.open(collection_photo(world, "Canis_lupus")))
    sent = bot.tg.send_user_message(USER, document=(data, "wolf.png", "image/png"))
    text = (await reply_to(bot.tg, sent)).result["text"]
    assert text.startswith("🐾 Canis lupus:"), text
    album = await reply_to(bot.tg, sent, "sendMediaGroup")
    assert len(album.params["media"]) == 10


async def test_classify_as_caption_and_as_reply(bot: Bot, world: World) -> None:
    tg = bot.tg
    photo = collection_photo(world, "Felis_catus").read_bytes()
    sent = tg.send_user_message(USER, photo=photo, caption="/classify")
    text = (await reply_to(tg, sent)).result["text"]
    assert "Felis catus" in text and text.count("%") >= 2
    # in a group (privacy mode: the bot sees only commands), as a reply to a photo
    group = -100500
    photo_msg = tg.send_user_message(group, user_id=USER, photo=photo, chat_type="group")
    command = tg.send_user_message(
        group,
        user_id=USER,
        text="/classify@kontrol_test_bot",
        chat_type="group",
        reply_to_message_id=photo_msg["message_id"],
    )
    text = (await reply_to(tg, command)).result["text"]
    assert "Felis catus" in text
    for message in (sent, photo_msg, command):
        await bot.handled.wait(message)
    assert not tg.calls("sendMediaGroup"), "/classify sends no album"
    assert not [c for c in tg.calls("sendMessage") if answers(photo_msg)(c)]


async def test_similar_as_caption_reply_and_species_filter(bot: Bot, world: World) -> None:
    tg = bot.tg
    photo = collection_photo(world, "Canis_lupus").read_bytes()
    sent = tg.send_user_message(USER, photo=photo, caption="/similar")
    album = await reply_to(tg, sent, "sendMediaGroup")
    assert len(album.params["media"]) == 10
    photo_msg = tg.send_user_message(USER, photo=photo, caption="just a caption")
    await reply_to(tg, photo_msg, "sendMediaGroup")  # a plain photo in private
    command = tg.send_user_message(
        USER, text="/similar felis_CATUS", reply_to_message_id=photo_msg["message_id"]
    )
    album = await reply_to(tg, command, "sendMediaGroup")
    captions = media_captions(album)
    assert len(captions) == 4 and all("Felis catus" in c for c in captions)
    await bot.handled.wait(sent)
    assert not [c for c in tg.calls("sendMessage") if answers(sent)(c)]


async def test_similar_takes_a_family_name(bot: Bot, world: World) -> None:
    """/similar Canidae: any rank of the lineage, not only a species."""
    photo = collection_photo(world, "Felis_catus").read_bytes()
    sent = bot.tg.send_user_message(USER, photo=photo, caption="/similar canidae")
    album = await reply_to(bot.tg, sent, "sendMediaGroup")
    captions = media_captions(album)
    assert captions and all(("Canis lupus" in c) or ("Vulpes vulpes" in c) for c in captions)


async def test_similar_unknown_species_suggests(bot: Bot, world: World) -> None:
    photo = collection_photo(world).read_bytes()
    sent = bot.tg.send_user_message(USER, photo=photo, caption="/similar Canis lupis")
    text = (await reply_to(bot.tg, sent)).result["text"]
    assert "Canis lupis" in text and "Canis lupus" in text and "/species" in text


async def test_species_lists_the_collection(bot: Bot) -> None:
    species = bot.tg.send_user_message(USER, text="/species")
    listing = (await reply_to(bot.tg, species)).result["text"]
    assert all(name in listing for name in SPECIES)


async def test_command_without_photo_explains(bot: Bot) -> None:
    sent = bot.tg.send_user_message(USER, text="/classify")
    text = (await reply_to(bot.tg, sent)).result["text"]
    assert "caption" in text and "reply" in text


# --- commands ---------------------------------------------------------------------------------


async def test_start_help_stats(bot: Bot, world: World) -> None:
    tg = bot.tg
    start = tg.send_user_message(USER, text="/start")
    assert "photo" in (await reply_to(tg, start)).result["text"]
    help_ = tg.send_user_message(USER, text="/help")
    text = (await reply_to(tg, help_)).result["text"]
    assert all(cmd in text for cmd in ("/classify", "/similar", "/stats", "/reindex"))
    stats = tg.send_user_message(USER, text="/stats")
    text = (await reply_to(tg, stats)).result["text"]
    total = world.engine.stats()["total_images"]
    assert f"Photos: {total}" in text and "Species: 3" in text and "efficientnet_lite0" in text
    assert tg.commands and {c["command"] for c in tg.commands} >= {"start", "help", "reindex"}


async def test_russian_replies(bot: Bot, world: World) -> None:
    tg = bot.tg
    help_ = tg.send_user_message(USER, text="/help", language_code="ru")
    assert "Как пользоваться" in (await reply_to(tg, help_)).result["text"]
    photo = collection_photo(world).read_bytes()
    sent = tg.send_user_message(USER, photo=photo, language_code="ru-RU")
    assert "уверенность" in (await reply_to(tg, sent)).result["text"]
    album = await reply_to(tg, sent, "sendMediaGroup")
    assert all("сходство" in c for c in media_captions(album))
    text = tg.send_user_message(USER, text="привет", language_code="ru")
    assert "Пришлите фото" in (await reply_to(tg, text)).result["text"]


# --- file_id reuse ------------------------------------------------------------------------------


async def test_album_photos_uploaded_once_also_after_restart(
    world: World, tg: FakeTelegram, tmp_path: Path
) -> None:
    settings = bot_settings(world.settings, tg, tmp_path / "state")
    photo = collection_photo(world).read_bytes()
    async with running(build_application(settings, world.engine)):
        first = tg.send_user_message(USER, photo=photo)
        album = await reply_to(tg, first, "sendMediaGroup")
        assert len(album.uploads) == 10 and not album.reused_file_ids
        second = tg.send_user_message(USER, photo=photo)
        album = await reply_to(tg, second, "sendMediaGroup")
        assert not album.uploads and len(album.reused_file_ids) == 10
    assert (tmp_path / "state" / "file_ids.json").is_file()
    async with running(build_application(settings, world.engine)):  # a restarted bot
        third = tg.send_user_message(USER, photo=photo)
        album = await reply_to(tg, third, "sendMediaGroup")
        assert not album.uploads and len(album.reused_file_ids) == 10


async def test_stale_file_ids_are_forgotten_and_photos_reuploaded(
    world: World, tg: FakeTelegram, tmp_path: Path
) -> None:
    photo = collection_photo(world).read_bytes()
    async with running(build_application(bot_settings(world.settings, tg, tmp_path), world.engine)):
        sent = tg.send_user_message(USER, photo=photo)
        await reply_to(tg, sent, "sendMediaGroup")
    with FakeTelegram() as other:  # another Telegram: the remembered ids mean nothing there
        settings = bot_settings(world.settings, other, tmp_path)
        async with running(build_application(settings, world.engine)):
            sent = other.send_user_message(USER, photo=photo)
            album = await reply_to(other, sent, "sendMediaGroup")
            assert len(album.uploads) == 10
            rejected = other.calls("sendMediaGroup")[0]
            assert rejected.status == 400 and rejected.reused_file_ids


async def test_single_result_sent_as_photo(world: World, tg: FakeTelegram, tmp_path: Path) -> None:
    settings = bot_settings(world.settings, tg, tmp_path / "state", top_k=1)
    photo = collection_photo(world).read_bytes()
    async with running(build_application(settings, world.engine)):
        for _ in range(2):
            sent = tg.send_user_message(USER, photo=photo, caption="/similar")
            single = await reply_to(tg, sent, "sendPhoto")
            assert "Vulpes vulpes" in single.params["caption"]
    first, second = tg.calls("sendPhoto")
    assert first.uploads and not first.reused_file_ids
    assert second.reused_file_ids and not second.uploads
    assert not tg.calls("sendMediaGroup")


# --- bad input --------------------------------------------------------------------------------


async def test_bad_inputs_get_clear_replies(bot: Bot, world: World) -> None:
    tg = bot.tg

    async def answer(**message) -> str:
        sent = tg.send_user_message(USER, **message)
        return (await reply_to(tg, sent)).result["text"]

    assert "not an image" in await answer(document=(b"%PDF-1.4 ...", "a.pdf", "application/pdf"))
    broken = jpeg(make_image(1))[:200]
    assert "could not read" in await answer(document=(broken, "broken.jpg", "image/jpeg"))
    assert "could not read" in await answer(photo=b"\xff\xd8\xff\xe0 not really a jpeg")
    assert "too small" in await answer(photo=jpeg(make_image(2, size=(40, 20))))
    gif = animated_gif()
    assert "Animated" in await answer(document=(gif, "a.gif", "image/gif"))
    assert "Animated" in await answer(video=b"\x00\x00\x00\x18ftypmp42")
    assert "Animated" in await answer(animation=b"\x00\x00\x00\x18ftypmp42")
    assert "Animated" in await answer(sticker=b"RIFF....WEBP")
    assert "Send me a photo" in await answer(text="hello there")
    assert not tg.calls("sendMediaGroup")


async def test_file_over_20_mb_is_not_downloaded(bot: Bot, world: World) -> None:
    tg = bot.tg
    data = collection_photo(world).read_bytes()
    big = 25 * 1024 * 1024
    for message in (
        {"document": (data, "huge.jpg", "image/jpeg"), "file_size": big},
        {"photo": data, "file_size": big},
    ):
        sent = tg.send_user_message(USER, **message)
        text = (await reply_to(tg, sent)).result["text"]
        assert "too large" in text and "20 MB" in text
    assert not tg.calls("getFile") and not tg.calls("download")


async def test_missing_index(world: World, tg: FakeTelegram, tmp_path: Path) -> None:
    empty = world.settings.model_copy(update={"index_dir": tmp_path / "no-index"})
    engine = Engine(empty, embedder=world.engine.embedder)
    settings = bot_settings(empty, tg, tmp_path / "state")
    photo = collection_photo(world).read_bytes()
    async with running(build_application(settings, engine)):
        user_msg = tg.send_user_message(USER, photo=photo)
        text = (await reply_to(tg, user_msg)).result["text"]
        assert "not indexed" in text and "/reindex" not in text
        admin_msg = tg.send_user_message(ADMIN, photo=photo)
        text = (await reply_to(tg, admin_msg)).result["text"]
        assert "not indexed" in text and "/reindex" in text
        stats = tg.send_user_message(USER, text="/stats")
        assert "not indexed" in (await reply_to(tg, stats)).result["text"]
    assert not tg.calls("getFile")


# --- re-index ---------------------------------------------------------------------------------


async def test_reindex_by_admin_edits_progress_and_swaps_index(
    own_bot: Bot, own_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    tg, engine = own_bot.tg, own_bot.engine
    before = engine.stats()["total_images"]
    make_collection(own_world.root, {"Vulpes_vulpes": 1}, seed=99)  # one new photo
    real = engine.reindex

    def slow_progress(progress=None, **kwargs):
        def report(p):  # the real progress, slowed so throttled edits are observable
            progress(p)
            threading.Event().wait(0.3)

        return real(progress=report, **kwargs)

    monkeypatch.setattr(engine, "reindex", slow_progress)
    command = tg.send_user_message(ADMIN, text="/reindex")
    status = await reply_to(tg, command)
    edit = await tg.wait_for("editMessageText", for_chat(ADMIN))
    assert edit.params["message_id"] == status.result["message_id"]
    final = await tg.wait_for(
        "editMessageText", lambda c: "finished" in c.params["text"], timeout=60
    )
    assert final.params["message_id"] == status.result["message_id"]
    edits = tg.calls("editMessageText", chat_id=ADMIN)
    assert any("%" in c.params["text"] and "photos/s" in c.params["text"] for c in edits)
    assert len(tg.calls("sendMessage", chat_id=ADMIN)) == 1  # one status message, edited
    stats = tg.send_user_message(USER, text="/stats")
    assert f"Photos: {before + 1}" in (await reply_to(tg, stats)).result["text"]


async def test_reindex_refused_for_non_admin(
    bot: Bot, gated: GateFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    gate = gated(bot.engine, "reindex")
    command = bot.tg.send_user_message(USER, text="/reindex")
    text = (await reply_to(bot.tg, command)).result["text"]
    assert "only the bot's admins" in text
    await bot.handled.wait(command)
    assert gate.calls == 0 and not bot.tg.calls("editMessageText")
    refused = [r for r in caplog.records if "Refused /reindex" in r.getMessage()]
    assert refused and refused[0].levelno >= logging.INFO and str(USER) in refused[0].getMessage()
    assert TOKEN not in caplog.text


async def test_second_reindex_refused_and_chats_answered_meanwhile(
    bot: Bot, gated: GateFactory
) -> None:
    tg = bot.tg
    gate = gated(bot.engine, "reindex")
    first = tg.send_user_message(ADMIN, text="/reindex")
    await reply_to(tg, first)
    assert await asyncio.to_thread(gate.entered.wait, 10)
    second = tg.send_user_message(ADMIN, text="/reindex")
    assert "already running" in (await reply_to(tg, second)).result["text"]
    help_ = tg.send_user_message(USER, text="/help")
    await reply_to(tg, help_)  # answered while the re-index is still running
    stats = tg.send_user_message(USER, text="/stats")
    assert "Photos:" in (await reply_to(tg, stats)).result["text"]
    assert gate.calls == 1
    gate.opened.set()
    await tg.wait_for("editMessageText", lambda c: "finished" in c.params["text"], timeout=60)


async def test_failed_reindex_keeps_old_index(
    own_bot: Bot, own_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    tg, engine = own_bot.tg, own_bot.engine
    before = engine.stats()
    broken = engine.settings.model_copy(update={"images_dir": own_world.root.parent / "gone"})
    monkeypatch.setattr(engine, "settings", broken)
    command = tg.send_user_message(ADMIN, text="/reindex")
    failed = await tg.wait_for("editMessageText", lambda c: "failed" in c.params["text"])
    assert "does not exist" in failed.params["text"] and "previous index" in failed.params["text"]
    monkeypatch.undo()
    assert engine.stats() == before
    photo = tg.send_user_message(USER, photo=collection_photo(own_world).read_bytes())
    assert (await reply_to(tg, photo)).result["text"].startswith("🐾 Vulpes vulpes:")
    del command


# --- robustness -------------------------------------------------------------------------------


async def test_help_answered_while_a_photo_is_processed(
    bot: Bot, world: World, gated: GateFactory
) -> None:
    tg = bot.tg
    gate = gated(bot.engine, "analyze")
    photo = tg.send_user_message(USER, photo=collection_photo(world).read_bytes())
    assert await asyncio.to_thread(gate.entered.wait, 10)
    other = 2002
    help_ = tg.send_user_message(other, text="/help")
    await reply_to(tg, help_, timeout=5)
    assert not [c for c in tg.calls("sendMessage") if answers(photo)(c)]
    gate.opened.set()
    await reply_to(tg, photo, "sendMediaGroup")


async def test_chat_action_repeats_during_long_work(
    world: World, tg: FakeTelegram, tmp_path: Path, gated: GateFactory
) -> None:
    settings = bot_settings(world.settings, tg, tmp_path / "state")
    app = build_application(settings, world.engine, chat_action_interval=0.1)
    gate = gated(world.engine, "analyze")
    async with running(app):
        sent = tg.send_user_message(USER, photo=collection_photo(world).read_bytes())
        actions = await tg.wait_for_count("sendChatAction", 3, for_chat(USER))
        assert {a.params["action"] for a in actions} == {"upload_photo"}
        gate.opened.set()
        await reply_to(tg, sent, "sendMediaGroup")


async def test_flood_limit_retried_nothing_lost(bot: Bot, world: World) -> None:
    tg = bot.tg
    tg.inject_error("sendMediaGroup", status=429, retry_after=1)
    sent = tg.send_user_message(USER, photo=collection_photo(world).read_bytes())
    album = await reply_to(tg, sent, "sendMediaGroup", timeout=15)
    assert len(album.params["media"]) == 10
    attempts = tg.calls("sendMediaGroup")
    assert [c.status for c in attempts] == [429, 200]


async def test_telegram_error_gets_apology(bot: Bot) -> None:
    tg = bot.tg
    tg.inject_error("sendMessage", status=400, description="Bad Request: injected")
    sent = tg.send_user_message(USER, text="/help")
    apology = await tg.wait_for("sendMessage", for_chat(USER))
    assert "Sorry" in apology.params["text"] and "Traceback" not in apology.params["text"]
    del sent


async def test_token_never_logged_nor_replied(
    bot: Bot, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
    tg = bot.tg
    tg.inject_error("sendMessage", status=400, description="Bad Request: injected")
    tg.send_user_message(USER, text="/start")
    await tg.wait_for("sendMessage", for_chat(USER))
    sent = tg.send_user_message(USER, photo=collection_photo(world).read_bytes())
    await reply_to(tg, sent, "sendMediaGroup")
    logging.getLogger("test").error("url http://x/bot%s/getMe", TOKEN)
    assert "HTTP Request" in caplog.text  # httpx really logged URLs here
    assert TOKEN not in caplog.text and TOKEN.replace(":", "%3A") not in caplog.text
    assert "[REDACTED]" in caplog.text
    for call in tg.calls():
        assert TOKEN not in str(call.params)


# --- transient Telegram failures ----------------------------------------------------------------


async def test_reply_survives_two_server_errors(bot: Bot) -> None:
    tg = bot.tg
    tg.inject_error("sendMessage", status=500, times=2, chat_id=USER)
    sent = tg.send_user_message(USER, text="/help")
    answer = await reply_to(tg, sent, timeout=5)
    assert "/classify" in answer.params["text"]
    assert [c.status for c in tg.calls("sendMessage", chat_id=USER)] == [500, 500, 200]


async def test_album_survives_a_server_error_and_a_dropped_connection(
    bot: Bot, world: World
) -> None:
    tg = bot.tg
    tg.inject_error("sendMediaGroup", status=500)
    tg.drop_connection("sendMediaGroup")
    sent = tg.send_user_message(USER, photo=collection_photo(world).read_bytes())
    album = await reply_to(tg, sent, "sendMediaGroup", timeout=5)
    assert len(album.params["media"]) == 10 and len(album.uploads) == 10
    assert [c.status for c in tg.calls("sendMediaGroup")] == [500, DROPPED, 200]
    await bot.handled.wait(sent)
    assert not [c for c in tg.calls("sendMessage") if "Sorry" in (c.text or "")]


async def test_photo_download_survives_bad_gateway_and_dropped_connection(
    bot: Bot, world: World
) -> None:
    tg = bot.tg
    tg.inject_error("getFile", status=502)
    tg.drop_connection("download")
    sent = tg.send_user_message(USER, photo=collection_photo(world).read_bytes())
    text = (await reply_to(tg, sent, timeout=5)).result["text"]
    assert text.startswith("🐾 Vulpes vulpes:")
    assert [c.status for c in tg.calls("getFile")] == [502, 200]
    assert [c.status for c in tg.calls("download")] == [DROPPED, 200]


async def test_reindex_status_edit_survives_server_errors(own_bot: Bot) -> None:
    tg = own_bot.tg
    tg.inject_error("editMessageText", status=503, times=3)
    command = tg.send_user_message(ADMIN, text="/reindex")
    status = await reply_to(tg, command)
    final = await tg.wait_for(
        "editMessageText", lambda c: "finished" in c.params["text"], timeout=60
    )
    assert final.params["message_id"] == status.result["message_id"]
    assert len(tg.calls("sendMessage", chat_id=ADMIN)) == 1  # edited, not re-sent


# --- damaged collection photos ------------------------------------------------------------------


async def test_damaged_collection_photo_is_left_out_of_the_album(
    own_bot: Bot, own_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    tg = own_bot.tg
    damaged = collection_photo(own_world)
    query = damaged.read_bytes()
    damaged.write_bytes(query[:300])  # truncated on disk after indexing
    sent = tg.send_user_message(USER, photo=query)
    text = (await reply_to(tg, sent)).result["text"]
    assert text.startswith("🐾 Vulpes vulpes:"), text  # the user's photo is fine
    album = await reply_to(tg, sent, "sendMediaGroup")
    assert len(album.params["media"]) == 9  # the ten best but the damaged one
    assert "100% similar" not in media_captions(album)[0]
    await own_bot.handled.wait(sent)
    replies = [c.params["text"] for c in tg.calls("sendMessage", chat_id=USER)]
    assert len(replies) == 1, replies  # the species only: no "could not read", no apology
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(damaged.resolve()) in r.getMessage() for r in warnings)


# --- commands addressed to another bot ----------------------------------------------------------


async def test_photo_captioned_for_another_bot(bot: Bot, world: World) -> None:
    tg = bot.tg
    photo = collection_photo(world, "Felis_catus").read_bytes()
    # in a private chat the photo was sent to us: answered as a plain photo
    private = tg.send_user_message(USER, photo=photo, caption="/classify@other_bot")
    assert (await reply_to(tg, private)).result["text"].startswith("🐾 Felis catus:")
    await reply_to(tg, private, "sendMediaGroup")
    # in a group the command is for the other bot: left alone
    group = -100501
    foreign = tg.send_user_message(
        group, user_id=USER, photo=photo, caption="/classify@other_bot", chat_type="group"
    )
    ours = tg.send_user_message(
        group, user_id=USER, photo=photo, caption="/classify@kontrol_test_bot", chat_type="group"
    )
    assert "Felis catus" in (await reply_to(tg, ours)).result["text"]
    await bot.handled.wait(foreign)
    assert not [c for c in tg.calls() if answers(foreign)(c)]
