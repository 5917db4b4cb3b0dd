"""Several bot instances, one database: two `kontrol bot` processes in webhook mode share one real
Milvus standalone server; a re-index run from a third process is answered by both without a
restart. Everything on 127.0.0.1: the Milvus binary from PyPI, the fake Telegram Bot API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_telegram import FakeTelegram
from tests.helpers import make_collection
from tests.milvus_server import TOKEN, MilvusTestServer, free_port, serving

REPO = Path(__file__).resolve().parents[1]
SECRET = "hook-secret-1"


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusTestServer]:
    yield from serving(tmp_path_factory.mktemp("milvus-bots"))


def _env(base: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTROL_")}
    env.update(base)
    env.update(extra)
    env["PYTHONPATH"] = str(REPO)
    return env


def _kontrol(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kontrol", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


async def _post(port: int, message: dict) -> None:
    update = json.dumps({"update_id": message["message_id"] + 10_000, "message": message})
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"http://127.0.0.1:{port}/hook",
            content=update,
            headers={
                "Content-Type": "application/json",
                "X-Telegram-Bot-Api-Secret-Token": SECRET,
            },
        )
    assert response.status_code == 200


async def test_two_bots_one_milvus_and_a_reindex_from_a_third_process(
    tmp_path: Path,
    milvus: MilvusTestServer,
    fake_telegram: FakeTelegram,
    shared_models_dir: Path,
) -> None:
    root = tmp_path / "photos"
    make_collection(root, {"Canis_lupus": 3, "Felis_catus": 3})
    base = {
        "KONTROL_IMAGES_DIR": str(root),
        "KONTROL_MODELS_DIR": str(shared_models_dir),
        "KONTROL_STORE": "milvus",
        "KONTROL_STORE_URL": milvus.url,
        "KONTROL_STORE_API_KEY": TOKEN,
        "KONTROL_STORE_COLLECTION": f"bots_{uuid.uuid4().hex[:10]}",
        "KONTROL_BOT_TOKEN": fake_telegram.token,
        "KONTROL_TELEGRAM_API_URL": fake_telegram.base_url,
        "KONTROL_TELEGRAM_FILE_URL": fake_telegram.base_file_url,
        "KONTROL_BOT_MODE": "webhook",
        "KONTROL_WEBHOOK_SECRET": SECRET,
        "KONTROL_WEBHOOK_LISTEN": "127.0.0.1",
    }
    indexer = _env(base, KONTROL_INDEX_DIR=str(tmp_path / "indexer"))
    first = _kontrol(indexer, "index", "--quiet", "--no-train")
    assert first.returncode == 0, first.stderr
    assert "Indexed 6 photos" in first.stdout

    ports = [free_port(), free_port()]
    bots = []
    try:
        for i, port in enumerate(ports):
            env = _env(
                base,
                KONTROL_INDEX_DIR=str(tmp_path / f"bot{i}"),
                KONTROL_BOT_STATE_DIR=str(tmp_path / f"state{i}"),
                KONTROL_WEBHOOK_PORT=str(port),
                KONTROL_WEBHOOK_URL=f"https://bot{i}.example.org/hook",
            )
            bots.append(
                subprocess.Popen(
                    [sys.executable, "-m", "kontrol", "bot"],
                    env=env,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for i in range(2):
            await fake_telegram.wait_for(
                "setWebhook", lambda c, i=i: f"bot{i}.example.org" in c.params["url"], timeout=180
            )

        async def ask(chat: int, port: int, photo: bytes) -> list[str]:
            message = fake_telegram.send_user_message(chat, photo=photo)
            await _post(port, message)
            album = await fake_telegram.wait_for(
                "sendMediaGroup", lambda c: c.chat_id == chat, timeout=120
            )
            return [item.get("caption", "") for item in album.params["media"]]

        wolf = sorted((root / "Canis_lupus").glob("*.jpg"))[0].read_bytes()
        for chat, port in ((501, ports[0]), (502, ports[1])):
            captions = await ask(chat, port, wolf)
            assert len(captions) == 6 and "Canis lupus" in captions[0]

        # a third process adds a species; both running bots serve it without a restart
        make_collection(root, {"Ursus_arctos": 2}, seed=7)
        again = _kontrol(indexer, "index", "--quiet", "--no-train")
        assert again.returncode == 0, again.stderr
        assert "2 embedded" in again.stdout
        bear = sorted((root / "Ursus_arctos").glob("*.jpg"))[0].read_bytes()
        for chat, port in ((601, ports[0]), (602, ports[1])):
            captions = await ask(chat, port, bear)
            assert len(captions) == 8, captions
            assert "Ursus arctos" in captions[0] and "100" in captions[0]
        for bot in bots:
            assert bot.poll() is None, "a bot process died"
    finally:
        for bot in bots:
            bot.terminate()
        for bot in bots:
            try:
                bot.wait(timeout=20)
            except subprocess.TimeoutExpired:
                bot.kill()
