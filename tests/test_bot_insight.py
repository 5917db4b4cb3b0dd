# ruff: noqa: F811 - pytest fixtures imported from test_bot_e2e are parameters here
"""End to end: the admin's /duplicates and /suspicious (real bot, fake Bot API, real engine on a
private copy of the collection); every wait is for an event."""

from __future__ import annotations

import io
import shutil

from PIL import Image

from tests.bot_helpers import ADMIN, USER, media_captions
from tests.test_bot_e2e import (  # noqa: F401 - fixtures
    Bot,
    World,
    answers,
    own_bot,
    own_world,
    reply_to,
    tg,
    world,
)


async def test_duplicates_are_shown_to_admins_as_albums(own_bot: Bot, own_world: World) -> None:
    source = sorted((own_world.root / "Felis_catus").glob("*.jpg"))[0]
    # a re-encoded copy filed under another species: a duplicate with conflicting labels
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").save(buffer, "JPEG", quality=70)
    (own_world.root / "Canis_lupus" / "copy-of-a-cat.jpg").write_bytes(buffer.getvalue())
    shutil.copy(source, own_world.root / "Felis_catus" / "exact-copy.jpg")
    own_world.engine.reindex(train="skip")

    tg = own_bot.tg
    refused = tg.send_user_message(USER, text="/duplicates")
    assert "only the bot's admins" in (await reply_to(tg, refused)).result["text"]

    asked = tg.send_user_message(ADMIN, text="/duplicates")
    summary = await tg.wait_for(
        "sendMessage", lambda c: c.chat_id == ADMIN and "near-duplicates" in c.params["text"]
    )
    assert int(summary.params["text"].split()[0]) >= 1

    def planted(call) -> bool:  # the album of the cat, its exact copy and its mislabelled copy
        captions = media_captions(call)
        return (
            call.chat_id == ADMIN
            and sum("Felis catus" in c for c in captions) >= 2
            and any("Canis lupus" in c for c in captions)
        )

    await own_bot.handled.wait(asked)
    assert [c for c in tg.calls("sendMediaGroup") if planted(c)]


async def test_suspicious_answers_with_a_count_and_refuses_non_admins(own_bot: Bot) -> None:
    tg = own_bot.tg
    refused = tg.send_user_message(USER, text="/suspicious")
    assert "only the bot's admins" in (await reply_to(tg, refused)).result["text"]
    asked = tg.send_user_message(ADMIN, text="/suspicious")
    summary = await tg.wait_for(
        "sendMessage", lambda c: c.chat_id == ADMIN and "neighbours" in c.params["text"]
    )
    assert "among 12" in summary.params["text"]
    await own_bot.handled.wait(asked)
