"""Settings: one env prefix, .env support, readable errors, secrets kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import BotSettings as Settings
from bot.settings import load_settings
from core.errors import ConfigError


def test_env_prefix_and_json_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTROL_TOP_K", "5")
    monkeypatch.setenv("KONTROL_ADMIN_IDS", "[1, 22]")
    s = load_settings()
    assert s.top_k == 5 and s.admin_ids == [1, 22]


def test_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("KONTROL_MODEL=efficientnet_lite2\nKONTROL_BATCH_SIZE=8\n")
    monkeypatch.chdir(tmp_path)
    s = Settings(_env_file=tmp_path / ".env")  # type: ignore[call-arg]
    assert s.model == "efficientnet_lite2" and s.batch_size == 8


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("KONTROL_TOP_K", "11"),
        ("KONTROL_TOP_K", "0"),
        ("KONTROL_RUNTIME", "tensorflow"),
        ("KONTROL_ADMIN_IDS", "[alice]"),
        ("KONTROL_CLASSIFY_MIN_SIMILARITY", "2"),
    ],
)
def test_wrong_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=key):
        load_settings()


def test_token_is_never_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "123456:SECRET-abcdefghijklmnop"
    monkeypatch.setenv("KONTROL_BOT_TOKEN", token)
    s = load_settings()
    assert token not in repr(s) and token not in str(s) and token not in str(s.model_dump())
    assert s.bot_token is not None and s.bot_token.get_secret_value() == token
    monkeypatch.setenv("KONTROL_TOP_K", "99")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert token not in str(err.value)


def test_every_field_is_documented() -> None:
    undocumented = [
        name
        for name, field in Settings.model_fields.items()
        if not field.description and name != "log_level"
    ]
    assert not undocumented


def test_admin_ids_accept_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTROL_ADMIN_IDS", "12, 34")
    assert load_settings().admin_ids == [12, 34]


def test_blank_token_means_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTROL_BOT_TOKEN", "  ")
    assert load_settings().bot_token is None


def test_engine_settings_hold_no_bot_secret() -> None:
    """The seam: the engine's settings have no token, admin or webhook field."""
    from bot.settings import BotSettings
    from core.settings import Settings as EngineSettings

    engine_fields = set(EngineSettings.model_fields)
    assert not engine_fields & {"bot_token", "admin_ids", "webhook_secret", "bot_state_dir"}
    assert {"bot_token", "admin_ids"} <= set(BotSettings.model_fields)
