"""Settings: placeholders and malformed secrets refuse to start, naming the variable."""

from __future__ import annotations

import base64
import stat

import pytest

from config.settings import ConfigError, Settings, resolve_secret_key

GOOD_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith("TINBAO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_embedded_sqlite(tmp_path):
    settings = Settings()
    assert settings.effective_database_url == "sqlite+aiosqlite:///var/tinbao.db"
    assert settings.is_embedded_db
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.telegram_api_url == "https://api.telegram.org/bot"
    assert settings.telegram_token is None
    settings.check()


def test_env_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("TINBAO_HTTP_PORT=9999\nTINBAO_DEFAULT_LOCALE=en\n")
    settings = Settings()
    assert settings.http_port == 9999 and settings.default_locale == "en"


def test_secret_key_is_generated_once_with_mode_0600(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    first = resolve_secret_key(settings)
    path = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_secret_key(settings) == first and len(first) == 32


def test_a_readable_key_file_refuses(tmp_path):
    settings = Settings(data_dir=tmp_path)
    resolve_secret_key(settings)
    (tmp_path / "secret.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        resolve_secret_key(settings)


@pytest.mark.parametrize("value", ["changeme", "secret", "CHANGEME", "xxx"])
def test_placeholder_secret_key_refuses(value):
    with pytest.raises(ConfigError, match="TINBAO_SECRET_KEY"):
        resolve_secret_key(Settings(secret_key=value))


@pytest.mark.parametrize("value", ["not base64 !!", "c2hvcnQ=", GOOD_KEY + "AAAA"])
def test_malformed_secret_key_refuses(value):
    with pytest.raises(ConfigError, match="TINBAO_SECRET_KEY"):
        resolve_secret_key(Settings(secret_key=value))


def test_given_key_is_used():
    assert resolve_secret_key(Settings(secret_key=GOOD_KEY)) == bytes(range(32))


def test_external_database_needs_a_key():
    settings = Settings(database_url="postgresql+asyncpg://u@h/db")
    with pytest.raises(ConfigError, match="TINBAO_SECRET_KEY is not set"):
        resolve_secret_key(settings)


def test_sync_driver_refuses():
    with pytest.raises(ConfigError, match="TINBAO_DATABASE_URL"):
        Settings(database_url="postgresql://u@h/db").check()


def test_webhook_needs_a_real_secret():
    with pytest.raises(ConfigError, match="TINBAO_WEBHOOK_SECRET"):
        Settings(webhook_url="https://example.org/hook").check()
    with pytest.raises(ConfigError, match="TINBAO_WEBHOOK_SECRET"):
        Settings(webhook_url="https://example.org/hook", webhook_secret="changeme").check()
    with pytest.raises(ConfigError, match="TINBAO_WEBHOOK_SECRET"):
        Settings(webhook_url="https://e.org/h", webhook_secret="has spaces in it!!!!").check()
    Settings(webhook_url="https://e.org/h", webhook_secret="a" * 32).check()


def test_placeholder_token_refuses():
    with pytest.raises(ConfigError, match="TINBAO_TELEGRAM_TOKEN"):
        Settings(telegram_token="changeme").check()
    Settings(telegram_token="").check()  # empty is "not set"


@pytest.mark.parametrize(
    "variable", ["TINBAO_REPORT_RATE_WINDOW_MINUTES", "TINBAO_PIN_ATTEMPT_WINDOW_MINUTES"]
)
def test_a_rate_window_longer_than_its_hits_are_kept_refuses(monkeypatch, variable):
    """Rate-limit hits are purged after two days: a longer window would silently be cut."""
    from pydantic import ValidationError

    monkeypatch.setenv(variable, "2880")
    Settings()
    monkeypatch.setenv(variable, "2881")
    with pytest.raises(ValidationError, match=variable.removeprefix("TINBAO_").lower()):
        Settings()


def test_a_login_window_longer_than_its_hits_are_kept_refuses(monkeypatch):
    from pydantic import ValidationError

    from admin.settings import AdminSettings

    monkeypatch.setenv("TINBAO_ADMIN_LOGIN_WINDOW_MINUTES", "2881")
    with pytest.raises(ValidationError, match="login_window_minutes"):
        AdminSettings()
