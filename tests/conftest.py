"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings, get_settings, load_settings
from tests.fake_telegram import fake_telegram, fake_telegram_factory  # noqa: F401
from tests.helpers import TinyEmbedder, make_collection


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's .env or KONTROL_* variables."""
    import os

    for key in list(os.environ):
        if key.startswith("KONTROL_"):
            monkeypatch.delenv(key)
    from bot.settings import BotSettings

    monkeypatch.setitem(Settings.model_config, "env_file", None)
    monkeypatch.setitem(BotSettings.model_config, "env_file", None)
    get_settings.cache_clear()


@pytest.fixture
def tiny_settings(tmp_path: Path) -> Settings:
    root = tmp_path / "collection"
    make_collection(
        root, {"Canis_lupus": 5, "Vulpes_vulpes": 4, "Felis_catus": 3, "Ursus_arctos": 1}
    )
    return load_settings(
        images_dir=root,
        index_dir=tmp_path / "embeddings",
        models_dir=tmp_path / "models",
        batch_size=4,
        index_type="flat",
    )


@pytest.fixture
def tiny_embedder() -> TinyEmbedder:
    return TinyEmbedder()


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models dir per test session, so the ONNX export of the real model happens once."""
    return tmp_path_factory.mktemp("models")
