"""Bot under injected faults: are replies lost when Telegram answers 5xx or drops connections?

The real application (`bot.app.build_application`, long polling, python-telegram-bot's HTTP stack
with the bot's `RetryingRequest`) runs against `tests.fake_telegram.FakeTelegram` on 127.0.0.1,
over a small synthetic collection indexed with `TinyEmbedder` (fast, no model). Users in several
chats send photos while the fake server fails requests at random (fixed seed): a share of the
calls to the faulted methods answer HTTP 500/502/503 (two thirds of the faults) or lose their
connection without an answer (one third), before the server acts on them.

A photo counts as answered when the server accepted both the species answer (the `sendMessage`
replying to the photo with the answer's buttons) and the album (`sendMediaGroup` replying to it).
The bot is quiescent for a photo once its update has been completely handled (a `TypeHandler` in
a group after the bot's own, as `tests.bot_helpers.Handled`); the script waits for that with one
overall timeout, never a fixed sleep. A photo with an answer missing after that is lost.

Usage::

    python scripts/bench_bot_faults.py                       # 200 photos, 10 chats, 0/10/30 %
    python scripts/bench_bot_faults.py --write RELIABILITY.md
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from telegram import Update  # noqa: E402
from telegram.ext import Application, ContextTypes, TypeHandler  # noqa: E402

from bot.app import build_application  # noqa: E402
from bot.request import BASE_DELAY, TRIES  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from core.engine import Engine  # noqa: E402
from tests.bot_helpers import bot_settings, jpeg, running  # noqa: E402
from tests.fake_telegram import ApiError, Call, FakeTelegram, _Dropped  # noqa: E402
from tests.helpers import TinyEmbedder, make_collection, make_image  # noqa: E402

FIRST_CHAT = 70_001
#: The methods faults are injected into ("download": file downloads).
FAULTED = ("sendMessage", "sendMediaGroup", "sendChatAction", "getFile", "download")
#: Requests a photo's answer cannot do without (sendChatAction is cosmetic; the bot ignores it).
CRITICAL = ("getFile", "download", "sendMessage", "sendMediaGroup")
STATUSES = (500, 502, 503)
LAYOUT = {f"Genus{i}_species{i}": 6 for i in range(5)}
MARK_START = "<!-- bench_bot_faults: start -->"
MARK_END = "<!-- bench_bot_faults: end -->"


class FaultyTelegram(FakeTelegram):
    """The fake Bot API, failing a share `rate` of the calls to `FAULTED` at random (seeded)."""

    def __init__(self, rate: float, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.rng = random.Random(seed)
        self.faulted = frozenset(m.lower() for m in FAULTED)
        self.injected: Counter[str] = Counter()  # "method 5xx" / "method dropped"
        self.streak: Counter[tuple[Any, ...]] = Counter()  # consecutive faults of one request
        self.gave_up: Counter[str] = Counter()  # requests that failed TRIES times in a row

    async def _download(self, request: Any, rest: str, arrival: float) -> Any:
        # No latency is set, so nothing runs between here and `_raise_injected("download", {})`.
        self._download_path = rest
        return await super()._download(request, rest, arrival)

    def _raise_injected(self, key: str, params: dict[str, Any]) -> None:
        super()._raise_injected(key, params)
        if key not in self.faulted or self.rate <= 0:
            return
        reply = params.get("reply_parameters") or {}
        if isinstance(reply, str):
            reply = {"raw": reply}
        ident = (
            key,
            params.get("chat_id"),
            str(reply),
            params.get("file_id"),
            params.get("action"),
        )
        if key == "download":
            ident = (key, getattr(self, "_download_path", None))
        with self._lock:
            draw = self.rng.random()
            if draw >= self.rate:
                self.streak.pop(ident, None)
                return
            self.streak[ident] += 1
            if self.streak[ident] >= TRIES:
                self.gave_up[key] += 1
                self.streak.pop(ident, None)
            if draw < self.rate * 2 / 3:
                status = self.rng.choice(STATUSES)
                self.injected[f"{key} 5xx"] += 1
            else:
                status = 0
                self.injected[f"{key} dropped"] += 1
        if status:
            raise ApiError(
                status,
                {500: "Internal Server Error", 502: "Bad Gateway"}.get(
                    status, "Service Unavailable"
                ),
            )
        raise _Dropped()


class Done:
    """Which photo updates the bot has completely handled (all handler groups, errors included)."""

    GROUP = 10_000

    def __init__(self, app: Application) -> None:
        self.keys: set[tuple[int, int]] = set()
        self.event = asyncio.Event()
        app.add_handler(TypeHandler(Update, self._record), group=self.GROUP)

    async def _record(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is not None:
            self.keys.add((message.chat_id, message.message_id))
            self.event.set()

    async def wait_all(self, keys: set[tuple[int, int]], timeout: float) -> bool:
        """True once every key was handled; False if `timeout` seconds passed first."""
        try:
            async with asyncio.timeout(timeout):
                while not keys <= self.keys:
                    self.event.clear()
                    await self.event.wait()
        except TimeoutError:
            return False
        return True


class _LogCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []
        self.retries = 0
        self.gave_up: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            cause = record.exc_info[1] if record.exc_info else None
            text = f"{record.name}: {record.msg}".replace("%s", "N")
            if cause is not None:
                text += f" ({type(cause).__name__}: {cause})"
            self.errors.append(text[:300])
        elif record.name == "bot.request" and "retrying" in record.getMessage():
            self.retries += 1


@dataclass
class Run:
    rate: float
    sent: set[tuple[int, int]] = field(default_factory=set)
    texts: Counter[tuple[int, int]] = field(default_factory=Counter)
    albums: Counter[tuple[int, int]] = field(default_factory=Counter)
    quiescent: bool = True
    wall_s: float = 0.0
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()
    injected: Counter[str] = field(default_factory=Counter)
    gave_up: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return sum(1 for k in self.sent if self.texts[k] and self.albums[k])

    @property
    def lost(self) -> int:
        return len(self.sent) - self.answered

    @property
    def duplicates(self) -> int:
        return sum(max(0, self.texts[k] - 1) + max(0, self.albums[k] - 1) for k in self.sent)

    def faults(self) -> tuple[int, int]:
        five = sum(n for k, n in self.injected.items() if k.endswith("5xx"))
        return five, sum(self.injected.values()) - five


def expected_lost(rate: float, photos: int) -> float:
    """Photos expected lost if each critical request fails independently with `rate` per try."""
    per_request = rate**TRIES
    return photos * (1 - (1 - per_request) ** len(CRITICAL))


def _reply_key(call: Call) -> tuple[int, int] | None:
    reply = call.params.get("reply_parameters") or {}
    mid = reply.get("message_id")
    return (int(call.chat_id), int(mid)) if mid is not None and call.chat_id is not None else None


def _world(base: Path) -> tuple[Any, Engine]:
    root = base / "collection"
    make_collection(root, LAYOUT)
    settings = load_settings(
        _env_file=None,
        images_dir=root,
        index_dir=base / "index",
        models_dir=base / "models",
        batch_size=8,
        top_k=10,
    )
    engine = Engine(settings, embedder=TinyEmbedder())
    engine.reindex()
    return settings, engine


async def _run(
    settings: Any,
    engine: Engine,
    state: Path,
    rate: float,
    *,
    photos: list[bytes],
    n: int,
    chats: int,
    send_rate: float,
    seed: int,
    timeout: float,
    retry_delay: float,
) -> Run:
    run = Run(rate)
    counter = _LogCounter()
    logging.getLogger().addHandler(counter)
    try:
        with FaultyTelegram(rate, seed) as tg:
            app = build_application(
                bot_settings(settings, tg, state), engine, retry_delay=retry_delay
            )
            done = Done(app)
            run.load_before = os.getloadavg()
            start = time.monotonic()
            async with running(app):
                for i in range(n):
                    delay = start + i / send_rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    message = tg.send_user_message(
                        FIRST_CHAT + i % chats, photo=photos[i % len(photos)]
                    )
                    run.sent.add((message["chat"]["id"], message["message_id"]))
                run.quiescent = await done.wait_all(run.sent, timeout)
                run.wall_s = time.monotonic() - start
            run.load_after = os.getloadavg()
            with tg._lock:
                requests = list(tg.requests)
            run.injected = Counter(tg.injected)
            run.gave_up = Counter(tg.gave_up)
            run.unknown = list(tg.unknown_methods)
    finally:
        logging.getLogger().removeHandler(counter)
    for call in requests:
        run.calls[call.method] += 1
        key = _reply_key(call)
        if not call.ok or key is None or key not in run.sent:
            continue
        if call.method == "sendMediaGroup":
            run.albums[key] += 1
        elif call.method == "sendMessage" and call.params.get("reply_markup"):
            run.texts[key] += 1  # the species answer carries its buttons
    run.retries = counter.retries
    run.errors = counter.errors
    return run


def _load(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


def report(runs: list[Run], args: argparse.Namespace) -> str:
    lines = [
        f"{args.photos} photos from {args.chats} chats, sent at {args.send_rate:g}/s to the real "
        f"bot (polling, `RetryingRequest`: {TRIES} tries, backoff from {args.retry_delay:g} s) "
        f"over a {sum(LAYOUT.values())}-photo synthetic collection indexed with `TinyEmbedder`. "
        f"Faults, at random with seed {args.seed}, on {', '.join(f'`{m}`' for m in FAULTED)} "
        "(file downloads): two thirds HTTP 500/502/503, one third dropped connections, decided "
        "before the server acts (so a retry never double-posts). Answered: the species message "
        "and the album both accepted by the server, counted once every update was completely "
        f"handled (overall timeout {args.timeout:g} s). Expected lost: photos x (1 - (1 - "
        f"rate^{TRIES})^{len(CRITICAL)}), the chance that one of a photo's {len(CRITICAL)} "
        f"critical requests ({', '.join(CRITICAL)}) fails all {TRIES} tries.",
        "",
        "| fault rate | photos | answered (text + album) | lost | expected lost | duplicates | "
        "faults injected (5xx / dropped) | retries logged | errors logged | wall time | "
        "load avg after (1, 5, 15 min) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        five, dropped = run.faults()
        lines.append(
            f"| {run.rate:.0%} | {len(run.sent)} | {run.answered} | {run.lost} | "
            f"{expected_lost(run.rate, len(run.sent)):.2f} | {run.duplicates} | "
            f"{five} / {dropped} | {run.retries} | {len(run.errors)} | {run.wall_s:.1f} s | "
            f"{_load(run.load_after)} |"
        )
    lines.append("")
    for run in runs:
        if not run.quiescent:
            lines.append(f"At {run.rate:.0%}: not every update was handled within the timeout.")
        if run.gave_up or run.errors:
            gave = ", ".join(f"`{m}` x {n}" for m, n in sorted(run.gave_up.items())) or "none"
            errs = "; ".join(f"`{e}` x {n}" for e, n in Counter(run.errors).most_common(3))
            lines.append(
                f"At {run.rate:.0%}: requests that failed all {TRIES} tries: {gave}. "
                f"Errors logged: {errs or 'none'}."
            )
        if run.unknown:
            lines.append(f"At {run.rate:.0%}, unknown API methods called: {run.unknown}.")
    cmd = "python scripts/bench_bot_faults.py" + (" " + " ".join(args.argv) if args.argv else "")
    lines.append(
        f"Command: `{cmd}`; load average (1, 5, 15 min) before: {_load(runs[0].load_before)}, "
        f"after: {_load(runs[-1].load_after)}; {os.cpu_count()} CPUs."
    )
    return "\n".join(lines)


def write(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{MARK_START}\n{body}\n{MARK_END}"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--chats", type=int, default=10)
    parser.add_argument("--rates", default="0,0.1,0.3", help="fault rates, comma-separated")
    parser.add_argument("--send-rate", type=float, default=20.0, help="photos per second")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="overall wait per run (s)")
    parser.add_argument("--retry-delay", type=float, default=BASE_DELAY)
    parser.add_argument("--write", type=Path, help="replace the marked section of this file")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    args.argv = raw
    logging.getLogger().setLevel(logging.WARNING)
    rates = [float(r) for r in args.rates.split(",")]
    photos = [jpeg(make_image(5000 + i, (320, 240))) for i in range(20)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-bot-faults-") as tmp:
        base = Path(tmp)
        settings, engine = _world(base)
        for i, rate in enumerate(rates):
            print(f"fault rate {rate:.0%}: {args.photos} photos ...", file=sys.stderr, flush=True)
            run = asyncio.run(
                _run(
                    settings,
                    engine,
                    base / f"state-{i}",
                    rate,
                    photos=photos,
                    n=args.photos,
                    chats=args.chats,
                    send_rate=args.send_rate,
                    seed=args.seed + i,
                    timeout=args.timeout,
                    retry_delay=args.retry_delay,
                )
            )
            print(
                f"  answered {run.answered}/{len(run.sent)}, lost {run.lost}, duplicates "
                f"{run.duplicates}, errors {len(run.errors)}, {run.wall_s:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
    body = report(runs, args)
    print(body)
    if args.write:
        write(args.write, body)
    return 0 if all(r.lost == 0 and r.quiescent for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
