"""Building blocks of the curator's tools on their own: credits, state claims, fair share."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.fairshare import FairShare
from bot.formatting import album_caption, attribution
from bot.names import CommonNames, name_line
from bot.state import BotState
from tests.fake_telegram import _parse_html, _utf16_len


def test_attribution_only_for_cc_by_and_within_the_caption_limit() -> None:
    hit = {"class": "Vulpes vulpes", "similarity": 0.9, "license": "CC BY 2.0", "author": "Ann"}
    assert album_caption("en", hit).endswith("\n© Ann · CC BY 2.0")
    assert attribution({**hit, "license": "cc-by-sa-4.0"}) == "© Ann · cc-by-sa-4.0"
    for other in ("CC BY-NC 4.0", "CC BY-ND 2.0", "CC0", "public domain", ""):
        assert attribution({**hit, "license": other}) is None, other
    huge = {**hit, "author": "<b>" + "x" * 5000, "common": "y" * 3000}
    caption = album_caption("en", huge)
    plain, _ = _parse_html(caption)
    assert _utf16_len(plain) <= 1024 and "<b>x" not in caption


def test_state_claims_happen_once_and_survive_reopening(tmp_path: Path) -> None:
    state = BotState(tmp_path)
    answer_id = state.new_answer(
        chat_id=1,
        user_id=2,
        username=None,
        file_id="f",
        predicted="Canis lupus",
        candidates=["Canis lupus", "Vulpes vulpes"],
        shown=10,
    )
    assert state.set_verdict(answer_id, "wrong") and not state.set_verdict(answer_id, "right")
    assert state.claim_page(answer_id, 10, 10) and not state.claim_page(answer_id, 10, 10)
    assert state.set_correction(answer_id, "Vulpes vulpes")
    assert not state.set_correction(answer_id, "Felis catus")
    token = state.put_pending("add", {"name": "Lynx lynx"})
    assert state.claim_pending(token) and not state.claim_pending(token)
    state.remember_album(1, [(5, "uuid-5")])
    state.close()
    again = BotState(tmp_path)
    assert again.album_photo(1, 5) == "uuid-5" and again.album_photo(1, 6) is None
    queue, total = again.review_queue()
    assert total == 1 and queue[0].correction == "Vulpes vulpes" and queue[0].shown == 20
    assert again.get_pending(token, "add") == {"name": "Lynx lynx", "_done": True}
    assert again.get_pending(token, "other") is None


def test_common_names_file_reloads_and_bad_file_is_ignored(tmp_path: Path) -> None:
    names = CommonNames(tmp_path)
    assert names.get("Vulpes vulpes", "en") is None
    (tmp_path / "names.csv").write_text("scientific_name,en,ru\nVulpes_vulpes,Red fox,Лиса\n")
    assert names.get("vulpes vulpes", "ru") == "Лиса"
    assert 'href="https://en.wikipedia.org/wiki/Red_fox"' in name_line("en", "Vulpes vulpes", names)
    (tmp_path / "names.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert names.get("Vulpes vulpes", "en") is None


async def test_fair_share_queues_only_past_the_limit() -> None:
    fair = FairShare(limit=2)
    told: list[int] = []
    release = asyncio.Event()
    entered = 0

    async def work(n: int) -> None:
        nonlocal entered

        async def waiting() -> None:
            told.append(n)

        async with fair.slot(1, waiting):
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(work(n)) for n in range(3)]
    while entered < 2 or not told:
        await asyncio.sleep(0)
    assert told == [2] and entered == 2
    release.set()
    await asyncio.gather(*tasks)
    assert entered == 3 and not fair._slots
