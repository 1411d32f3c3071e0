"""Settings of the web panel, read from ``TINBAO_ADMIN_*`` variables (and ``TINBAO_BOT_USERNAME``).

Kept apart from :mod:`config.settings` so the panel can be tuned without touching the service's
own settings; every value has a safe default.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AdminSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TINBAO_ADMIN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    #: A session ends after this long without a request.
    session_idle_minutes: int = Field(default=8 * 60, ge=1)
    #: ... and after this long in any case.
    session_max_hours: int = Field(default=24, ge=1)
    #: Passwords checked per window for one account from one address (then one more each
    #: time an old attempt leaves the window: a slow-down, not a lock).
    login_attempts_per_account: int = Field(default=5, ge=1)
    #: Attempts per window from one address, whatever the account (password spraying).
    login_attempts_per_address: int = Field(default=50, ge=1)
    login_window_minutes: int = Field(default=15, ge=1, le=2880)  # hits are kept two days
    #: The bot's @username, for the deep links on QR posters; read from the bot when it is up.
    bot_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TINBAO_BOT_USERNAME", "TINBAO_ADMIN_BOT_USERNAME"),
    )
    page_size: int = Field(default=50, ge=5, le=500)
    #: Password checks (argon2, ~64 MiB each) running at once, in threads off the event loop.
    password_concurrency: int = Field(default=2, ge=1, le=16)
