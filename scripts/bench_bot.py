"""Bot load benchmark: many chats send photos at once through the fake Bot API server.

The real `bot.app.build_application` application polls `tests.fake_telegram.FakeTelegram` over
loopback HTTP, with the real engine serving the synthetic 100k-vector FaissStore. Latency is measured
from the moment a photo update is queued on the server (the user "sent" it) to the moment the
server has answered the bot's `sendMediaGroup` for it (the album is "sent").
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench_engine import (
    DEFAULT_KIND,
    Section,
    SyntheticIndex,
    Target,
    demo_photos,
    loadavg,
    ms,
    settings,
)
from PIL import Image
from pydantic import SecretStr

from core.embedders.base import Embedder
from core.engine import Engine

FIRST_CHAT = 50_001
#: Telegram hands bots photos of at most 1280 px on the long side.
TELEGRAM_MAX_SIDE = 1280


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}"[:300])


def telegram_photos() -> list[bytes]:
    """The demo photos as Telegram would deliver them: <= 1280 px, JPEG quality 87."""
    out = []
    for path in demo_photos():
        with Image.open(path) as im:
            image = im.convert("RGB")
        image.thumbnail((TELEGRAM_MAX_SIDE, TELEGRAM_MAX_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=87)
        out.append(buf.getvalue())
    return out


@dataclass
class Phase:
    """One load phase: what was sent when, and what came back."""

    name: str
    sent: dict[tuple[int, int], float] = field(default_factory=dict)  # (chat, msg id) -> time
    album_done: dict[tuple[int, int], float] = field(default_factory=dict)
    texts: set[tuple[int, int]] = field(default_factory=set)
    duplicates: int = 0
    album_sizes: list[int] = field(default_factory=list)
    failed_calls: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [self.album_done[k] - t for k, t in self.sent.items() if k in self.album_done]

    @property
    def lost(self) -> int:
        return len(self.sent) - len(self.album_done)

    @property
    def missing_text(self) -> int:
        return sum(1 for k in self.sent if k not in self.texts)

    def span(self) -> float:
        """First photo sent -> last album done (seconds)."""
        if not self.album_done:
            return float("nan")
        return max(self.album_done.values()) - min(self.sent.values())

    def completion_rate(self) -> float:
        """Albums completed per second between the first and the last completion."""
        done = sorted(self.album_done.values())
        return (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else float("nan")


def _reply_key(call: Any) -> tuple[int, int] | None:
    reply = call.params.get("reply_parameters") or {}
    mid = reply.get("message_id")
    return (int(call.chat_id), int(mid)) if mid is not None and call.chat_id is not None else None


def _collect(tg: Any, phase: Phase, since: int) -> None:
    for call in tg.requests[since:]:
        key = _reply_key(call)
        if not call.ok:
            phase.failed_calls.append(f"{call.method}: {call.error}")
            continue
        if key is None or key not in phase.sent:
            continue
        if call.method == "sendMediaGroup":
            if key in phase.album_done:
                phase.duplicates += 1
            else:
                phase.album_done[key] = call.done_time or call.time
                phase.album_sizes.append(len(call.params.get("media") or []))
        elif call.method == "sendMessage":
            phase.texts.add(key)


async def _wait_answered(tg: Any, phase: Phase, since: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with tg._lock:  # a snapshot of the request log
            answered = {
                _reply_key(c)
                for c in tg.requests[since:]
                if c.method == "sendMediaGroup" and c.ok and c.done_time
            }
        if all(k in answered for k in phase.sent):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # let the classification texts land too
    _collect(tg, phase, since)


async def _run_phase(
    tg: Any,
    name: str,
    photos: list[bytes],
    n: int,
    chats: int,
    rate: float | None,
    offset: int,
) -> Phase:
    """Send `n` photos from `chats` chats, open loop at `rate` photos/s (None = all at once)."""
    phase = Phase(name)
    since = tg.mark()
    start = time.monotonic()
    for i in range(n):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        chat = FIRST_CHAT + (i % chats)
        photo = photos[(offset + i) % len(photos)]
        sent_at = time.monotonic()
        message = tg.send_user_message(chat, photo=photo)
        phase.sent[(chat, int(message["message_id"]))] = sent_at
        if not rate and i % 10 == 9:
            await asyncio.sleep(0)  # let the bot start while we queue
    await _wait_answered(tg, phase, since, timeout=max(60.0, 3.0 * n))
    return phase


async def _bench(
    synthetic: SyntheticIndex,
    embedder: Embedder,
    tmp: Path,
    photos_n: int,
    chats: int,
    rate: float,
    log: Any,
) -> tuple[list[Phase], dict[str, Any]]:
    from bot.app import build_application
    from bot.settings import load_settings as load_bot_settings
    from tests.fake_telegram import TOKEN, FakeTelegram, polling

    kind = DEFAULT_KIND if DEFAULT_KIND in synthetic.dirs else next(iter(synthetic.dirs))
    t0 = time.perf_counter()
    synthetic.materialize()
    link_s = time.perf_counter() - t0
    log(f"  linked {len(synthetic.rows):,} collection files in {link_s:.1f} s")
    photos = telegram_photos()
    errors = _ErrorCounter()
    logging.getLogger().addHandler(errors)
    extra: dict[str, Any] = {"index_type": kind, "link_s": link_s}
    phases: list[Phase] = []
    with FakeTelegram() as tg:
        s = load_bot_settings(
            _env_file=None,
            models_dir=settings().models_dir,
            images_dir=synthetic.root,
            index_dir=synthetic.dirs[kind],
            index_type=kind,
            bot_state_dir=tmp / "bot-state",
        ).model_copy(
            update={
                "bot_token": SecretStr(TOKEN),
                "telegram_api_url": tg.base_url,
                "telegram_file_url": tg.base_file_url,
            }
        )
        engine = Engine(s, embedder=embedder)
        engine.warmup()
        app = build_application(s, engine)
        try:
            async with polling(app, timeout=2.0):
                log(f"  warm-up: {len(photos)} distinct photos, 1 chat at a time (cold caches)")
                warm = await _run_phase(tg, "warm-up", photos, len(photos), 1, 4.0, 0)
                extra["warm"] = warm
                log(f"  sustained: {photos_n} photos at {rate:g}/s from {chats} chats")
                phases.append(await _run_phase(tg, "sustained", photos, photos_n, chats, rate, 7))
                log(f"  burst: {photos_n} photos at once from {chats} chats")
                phases.append(await _run_phase(tg, "burst", photos, photos_n, chats, None, 13))
        finally:
            logging.getLogger().removeHandler(errors)
        extra["errors"] = errors.records
        extra["unknown_methods"] = list(tg.unknown_methods)
    engine.close()
    return phases, extra


def bench_bot(
    synthetic: SyntheticIndex,
    embedder: Embedder,
    tmp: Path,
    *,
    photos: int,
    chats: int,
    rate: float,
    log: Any,
) -> Section:
    """Run the load phases and turn them into a report section."""
    phases, extra = asyncio.run(_bench(synthetic, embedder, tmp, photos, chats, rate, log))
    sustained, burst = phases
    warm: Phase = extra["warm"]
    n = len(synthetic.rows)
    sec = Section("bot", "4. Bot under load")
    sec.body += [
        "The real application (`bot.app.build_application(settings, engine)`, long polling, "
        "python-telegram-bot's HTTP stack and `AIORateLimiter`) against "
        "`tests.fake_telegram.FakeTelegram` on 127.0.0.1, with the engine serving the "
        f"{n:,}-vector FaissStore (`index_type={extra['index_type']}`) of section 1 "
        "(every row a real file: the "
        "synthetic rows are hard links to their source demo photos, so albums render and upload "
        "real thumbnails). Users send the demo photos re-encoded as Telegram delivers them "
        f"(<= {TELEGRAM_MAX_SIDE} px, JPEG q87); each photo gets a classification message and "
        "a 10-photo album. Latency: photo update queued on the server -> server has answered "
        "the bot's `sendMediaGroup` for it. The fake server runs in the same process (its own "
        "thread), so it competes with the bot for the CPU and the GIL: a pessimistic setup. "
        f"Load average at the end: {loadavg()}.",
        "",
        f"Phases: warm-up ({len(warm.sent)} distinct photos, one chat, 4/s: thumbnails rendered "
        f"and file ids learned, cold-cache latency p50 {ms(warm.latencies, 50):.0f} ms / p95 "
        f"{ms(warm.latencies, 95):.0f} ms); **sustained**: {len(sustained.sent)} photos from "
        f"{chats} chats at a steady {rate:g} photos/s (open loop); **burst**: "
        f"{len(burst.sent)} photos from {chats} chats all at once (capacity).",
        "",
        "| phase | photos | albums | lost | missing text | duplicate | failed API calls | "
        "p50 | p95 | max | answered/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ph in phases:
        rate_txt = (
            f"{ph.completion_rate():.1f} (completions)"
            if ph.name == "sustained"
            else f"{len(ph.album_done) / ph.span():.1f} (all / span)"
        )
        sec.body.append(
            f"| {ph.name} | {len(ph.sent)} | {len(ph.album_done)} | {ph.lost} | "
            f"{ph.missing_text} | {ph.duplicates} | {len(ph.failed_calls)} | "
            f"{ms(ph.latencies, 50):.0f} ms | {ms(ph.latencies, 95):.0f} ms | "
            f"{ms(ph.latencies, 100):.0f} ms | {rate_txt} |"
        )
    problems = extra["errors"] + [c for ph in (warm, *phases) for c in ph.failed_calls]
    sizes = [x for ph in (warm, *phases) for x in ph.album_sizes]
    sec.body += [
        "",
        f"Album sizes: min {min(sizes, default=0)}, max {max(sizes, default=0)} photos. "
        f"Errors logged by the bot: {len(extra['errors'])}; failed API calls: "
        f"{sum(len(ph.failed_calls) for ph in (warm, *phases))}"
        + (f" (first: `{problems[0]}`)" if problems else "")
        + ".",
    ]
    clean = all(ph.lost == 0 and ph.missing_text == 0 for ph in (warm, *phases)) and not problems
    p95 = ms(sustained.latencies, 95)
    capacity = len(burst.album_done) / burst.span() if burst.album_done else 0.0
    sec.targets += [
        Target(
            f"Bot p95 photo -> album, {rate:g} photos/s from {chats} chats, {n // 1000}k index",
            "p95 <= 1 s",
            f"p50 {ms(sustained.latencies, 50):.0f} ms, p95 {p95:.0f} ms",
            p95 <= 1000 and sustained.lost == 0,
        ),
        Target(
            f"Bot throughput ({len(burst.sent)} photos at once, {chats} chats)",
            ">= 10 photos/s",
            f"{capacity:.1f} photos/s",
            capacity >= 10 and burst.lost == 0,
        ),
        Target(
            "Bot: no error, no lost reply",
            "0 errors, 0 lost",
            f"{len(problems)} errors, "
            f"{sum(ph.lost + ph.missing_text for ph in (warm, *phases))} lost",
            clean,
        ),
    ]
    if np.isnan(p95):
        sec.targets[0].passed = False
    return sec
