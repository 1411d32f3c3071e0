"""Service settings, read from ``TINBAO_*`` environment variables or a ``.env`` file.

Every secret is a :class:`~pydantic.SecretStr`. A placeholder or malformed secret refuses to
start with a message that names the variable to set.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The shortest outbox retention (days) besides 0: a week, as long as update ids are remembered.
OUTBOX_MIN_DAYS = 7

PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "password",
        "placeholder",
        "xxx",
        "todo",
        "your-secret-key",
        "your_secret_key",
        "replace-me",
        "test",
        "default",
    }
)

SECRET_KEY_FILE = "secret.key"  # noqa: S105 (a file name, not a secret)


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message names the variable to fix."""


class Settings(BaseSettings):
    """All settings of the service. See the README for the full table."""

    model_config = SettingsConfigDict(
        env_prefix="TINBAO_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- Telegram -------------------------------------------------------------------------
    telegram_token: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org/bot"
    telegram_file_url: str = "https://api.telegram.org/file/bot"
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    polling_timeout: int = Field(default=30, ge=0, le=60)

    # --- Zalo Bot Platform (docs/zalo.md) ---------------------------------------------------
    zalo_bot_token: SecretStr | None = None
    zalo_bot_api_url: str = "https://bot-api.zaloplatforms.com/bot"
    zalo_bot_webhook_url: str | None = None
    zalo_bot_webhook_secret: SecretStr | None = None
    zalo_bot_polling_timeout: int = Field(default=30, ge=1, le=60)

    # --- Zalo Official Account (docs/zalo.md) -----------------------------------------------
    zalo_oa_app_id: str | None = None
    zalo_oa_secret_key: SecretStr | None = None
    zalo_app_secret: SecretStr | None = None
    zalo_oa_refresh_token: SecretStr | None = None
    zalo_oa_api_url: str = "https://openapi.zalo.me"
    zalo_oauth_url: str = "https://oauth.zaloapp.com"
    #: Largest image a Zalo citizen may send (bytes); larger downloads are cut off and refused.
    zalo_media_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    zalo_media_timeout: float = Field(default=30.0, gt=0)

    # --- storage ----------------------------------------------------------------------------
    data_dir: Path = Path("var")
    database_url: str | None = None
    secret_key: SecretStr | None = None
    #: Keys being rotated away from (comma-separated): read, never written. See docs/operations.md.
    previous_secret_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # --- web --------------------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    #: Reverse proxies (addresses or networks, comma-separated) whose ``X-Forwarded-For`` and
    #: ``X-Forwarded-Proto`` are believed; from anyone else those headers are ignored.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )
    #: Served over https in any case (a TLS proxy that sends no X-Forwarded-Proto): cookies are
    #: ``Secure`` and HSTS is sent.
    force_https: bool = False
    #: Seconds a connection may take to send a request's headers (and stay idle between two).
    http_header_timeout: float = Field(default=15.0, gt=0, le=600)
    #: Seconds a request may take to send its body.
    http_body_timeout: float = Field(default=30.0, gt=0, le=600)
    #: Open connections at most; one more is answered 503 and closed.
    http_max_connections: int = Field(default=512, ge=1, le=100_000)
    #: Largest request body in bytes (413 above).
    http_max_body_bytes: int = Field(default=1024**2, ge=1024, le=64 * 1024**2)
    #: The citizens' page's public base URL (``https://tinbao.example.vn``), printed on posters.
    public_url: str | None = None
    #: Serve the citizens' reporting page at ``/``.
    web_enabled: bool = True
    #: The most a citizen's form may upload at once, in MB (each image keeps its own limit).
    web_upload_max_mb: int = Field(default=60, ge=1, le=500)

    # --- citizens ---------------------------------------------------------------------------
    default_locale: Literal["vi", "en"] = "vi"
    draft_ttl_hours: float = Field(default=7 * 24, gt=0)
    report_rate_limit: int = Field(default=5, ge=1)
    #: Rate-limit windows end within the two days their hits are kept (handlers.maintenance).
    report_rate_window_minutes: int = Field(default=60, ge=1, le=2880)
    pin_attempts_per_code: int = Field(default=5, ge=1)
    pin_attempts_per_sender: int = Field(default=10, ge=1)
    pin_attempt_window_minutes: int = Field(default=15, ge=1, le=2880)
    max_media_per_report: int = Field(default=10, ge=1, le=50)

    # --- catalogue and routing --------------------------------------------------------------
    units_file: Path | None = None
    #: The operator's queue map (TOML): which officers' chat serves which units.
    queues_file: Path | None = None
    #: The provincial duty queue: every unit without a queue, and every escalation.
    duty_chat_id: int | None = None
    duty_thread_id: int | None = None
    #: Operator-supplied GeoJSON: unit boundaries (polygons) or centres (points).
    geometry_file: Path | None = None
    centre_radius_km: float = Field(default=5.0, gt=0)

    # --- officers and delivery ----------------------------------------------------------------
    #: Telegram user ids of the first admins (comma-separated or a JSON list).
    admin_telegram_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    officer_locale: Literal["vi", "en"] = "vi"
    #: Where commanders decide rewards (falls back to the duty queue).
    rewards_chat_id: int | None = None
    rewards_thread_id: int | None = None
    reward_cap_vnd: int = Field(default=10_000_000, gt=0)
    #: TOML with payout instructions: ``default = "..."`` and ``[units] "30307" = "..."``.
    reward_instructions_file: Path | None = None
    emergency_ack_minutes: float = Field(default=3.0, gt=0)
    tip_claim_reminder_hours: float = Field(default=24.0, gt=0)
    delivery_group_per_minute: int = Field(default=20, ge=1)
    delivery_chat_per_second: float = Field(default=1.0, gt=0)
    delivery_global_per_second: int = Field(default=30, ge=1)
    #: Where the monthly statistics report (PDF) is posted on the first of each month: ``duty``
    #: (the duty queue's chat), ``off``, or a chat id (``-1001234567890``, ``.../<topic id>``).
    stats_report_chat: str = Field(default="duty", pattern=r"(?i)^\s*(duty|off|-?\d+(/\d+)?)\s*$")
    #: How often the delivery loops look at the outbox when nothing woke them (the officers'
    #: worker and the timers 5 s, the citizen messenger 2 s when unset). On PostgreSQL they are
    #: woken by LISTEN/NOTIFY as rows are committed; this is the fallback.
    outbox_poll_seconds: float | None = Field(default=None, gt=0)

    # --- retention (0 = kept; see the README for each default) ------------------------------
    #: The route back to a tipster (and a phone they left) this many days after closing.
    retention_route_days: int = Field(default=180, ge=0)
    #: Evidence files (stored images, file references) this many days after closing.
    retention_evidence_days: int = Field(default=365, ge=0)
    #: Closed reports' free text (description, place, time, relay messages, captions).
    retention_text_years: int = Field(default=0, ge=0)
    #: Audit events not tied to a report (enrolments, sign-ins, retention runs).
    retention_audit_days: int = Field(default=0, ge=0)
    #: Outbox rows that are over (sent, folded into a digest, fired or cancelled timers) this
    #: many days after they were last due; rows still waiting or being sent are never deleted.
    #: 0 or at least :data:`OUTBOX_MIN_DAYS`.
    retention_outbox_days: int = Field(default=30, ge=0)
    #: Outbox rows the delivery gave up on (``failed``), what an operator looks into.
    retention_outbox_failed_days: int = Field(default=90, ge=0)

    # --- logging and metrics ---------------------------------------------------------------
    log_level: str = "INFO"
    #: ``text`` (one line per record) or ``json`` (one JSON object per line, for a collector).
    log_format: Literal["text", "json"] = "text"
    #: Addresses or networks that may read ``GET /metrics`` (the peer's own address); empty:
    #: anyone who reaches the port (keep the proxy from exposing it).
    metrics_allow: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )

    # --- time ---------------------------------------------------------------------------------
    #: The zone of every time shown to a person (IANA name); the database keeps UTC.
    timezone: str = "Asia/Ho_Chi_Minh"

    @field_validator("admin_telegram_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies", "metrics_allow", mode="before")
    @classmethod
    def _split_proxies(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [part.strip() for part in text.replace(";", ",").split(",")]
        if isinstance(value, list):
            try:
                return [ip_network(str(part), strict=False) for part in value if str(part)]
            except ValueError as exc:
                raise ValueError(
                    f"TINBAO_{str(info.field_name).upper()}: {exc} (expected addresses or "
                    "networks, comma-separated, e.g. 127.0.0.1,10.0.0.0/8)"
                ) from exc
        return value

    @field_validator("retention_outbox_days", "retention_outbox_failed_days")
    @classmethod
    def _outbox_floor(cls, value: int, info: ValidationInfo) -> int:
        if 0 < value < OUTBOX_MIN_DAYS:
            raise ValueError(
                f"TINBAO_{str(info.field_name).upper()}={value}: 0 (kept) or at least "
                f"{OUTBOX_MIN_DAYS} days (an outbox row is deleted only well after anything may "
                "still look for it)"
            )
        return value

    @field_validator("previous_secret_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("telegram_token", "webhook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(
        "zalo_bot_token",
        "zalo_bot_webhook_url",
        "zalo_bot_webhook_secret",
        "zalo_oa_app_id",
        "zalo_oa_secret_key",
        "zalo_app_secret",
        "zalo_oa_refresh_token",
        mode="before",
    )
    @classmethod
    def _empty_zalo_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tinbao.db').as_posix()}"

    @property
    def is_embedded_db(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def webhook_enabled(self) -> bool:
        return bool(self.webhook_url)

    def check(self) -> None:
        """Refuse an unusable combination of settings, naming the variable to fix."""
        if self.webhook_url and self.webhook_secret is None:
            raise ConfigError(
                "TINBAO_WEBHOOK_URL is set but TINBAO_WEBHOOK_SECRET is not: set a random "
                "secret of 1-256 characters from A-Z, a-z, 0-9, _ and -."
            )
        if self.webhook_secret is not None:
            value = self.webhook_secret.get_secret_value()
            if value.lower() in PLACEHOLDER_SECRETS or len(value) < 16:
                raise ConfigError(
                    "TINBAO_WEBHOOK_SECRET is a placeholder or shorter than 16 characters: "
                    "set a random secret."
                )
            if not all(c.isascii() and (c.isalnum() or c in "_-") for c in value):
                raise ConfigError(
                    "TINBAO_WEBHOOK_SECRET may only hold A-Z, a-z, 0-9, _ and - (a Telegram rule)."
                )
        if self.telegram_token is not None:
            token = self.telegram_token.get_secret_value()
            if token.lower() in PLACEHOLDER_SECRETS or ":" not in token:
                raise ConfigError(
                    "TINBAO_TELEGRAM_TOKEN does not look like a bot token from @BotFather "
                    "(expected '<digits>:<letters>')."
                )
        self._check_zalo()
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            if self.timezone != "Asia/Ho_Chi_Minh":  # Vietnam keeps UTC+7 without a database
                raise ConfigError(
                    f"TINBAO_TIMEZONE {self.timezone!r} is not a known time zone "
                    "(an IANA name such as Asia/Ho_Chi_Minh)."
                ) from exc
        if not self.database_url_is_async:
            raise ConfigError(
                "TINBAO_DATABASE_URL must use an async driver: "
                "'sqlite+aiosqlite:///path.db' or 'postgresql+asyncpg://user@host/db'."
            )

    @property
    def zalo_bot_enabled(self) -> bool:
        return self.zalo_bot_token is not None

    @property
    def zalo_oa_enabled(self) -> bool:
        return self.zalo_oa_app_id is not None

    def _check_zalo(self) -> None:
        """The Zalo channels: a token that looks like one, and an OA with all its keys."""
        if self.zalo_bot_token is not None:
            token = self.zalo_bot_token.get_secret_value()
            if token.lower() in PLACEHOLDER_SECRETS or ":" not in token:
                raise ConfigError(
                    "TINBAO_ZALO_BOT_TOKEN does not look like a token from Zalo Bot Creator "
                    "(expected '<bot id>:<secret>')."
                )
        if self.zalo_bot_webhook_url and self.zalo_bot_webhook_secret is None:
            raise ConfigError(
                "TINBAO_ZALO_BOT_WEBHOOK_URL is set but TINBAO_ZALO_BOT_WEBHOOK_SECRET is not: "
                "set a random secret of 16-256 characters."
            )
        if self.zalo_bot_webhook_secret is not None:
            value = self.zalo_bot_webhook_secret.get_secret_value()
            if value.lower() in PLACEHOLDER_SECRETS or not 16 <= len(value) <= 256:
                raise ConfigError(
                    "TINBAO_ZALO_BOT_WEBHOOK_SECRET is a placeholder or not 16-256 characters "
                    "long: set a random secret."
                )
        if self.zalo_oa_app_id is None:
            return
        for name in ("zalo_oa_secret_key", "zalo_app_secret"):
            secret = getattr(self, name)
            if secret is None or secret.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                raise ConfigError(
                    f"TINBAO_ZALO_OA_APP_ID is set but TINBAO_{name.upper()} is missing or a "
                    "placeholder: copy it from the Zalo for Developers app settings."
                )

    @property
    def database_url_is_async(self) -> bool:
        url = self.effective_database_url
        return url.startswith("sqlite+aiosqlite:") or url.startswith("postgresql+asyncpg:")


def load_settings(**overrides: object) -> Settings:
    settings = Settings(**overrides)  # type: ignore[arg-type]
    settings.check()
    return settings


def _decode_key(raw: str, variable: str = "TINBAO_SECRET_KEY") -> bytes:
    try:
        key = base64.b64decode(raw.encode("ascii"), altchars=b"-_", validate=True)
        if base64.urlsafe_b64encode(key).decode("ascii").rstrip("=") != raw.rstrip("="):
            raise ValueError("not canonical base64")
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ConfigError(
            f"{variable} is malformed: it must be 32 random bytes in URL-safe base64 "
            '(generate one with: python -c "import secrets,base64;'
            'print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())").'
        ) from exc
    if len(key) != 32:
        raise ConfigError(
            f"{variable} is malformed: it decodes to {len(key)} bytes, 32 are needed."
        )
    return key


def resolve_secret_key(settings: Settings) -> bytes:
    """Return the 32-byte master key.

    On the embedded SQLite default the key is generated once into ``<data_dir>/secret.key``
    (mode 0600). Anywhere else it must be given as ``TINBAO_SECRET_KEY``.
    """
    if settings.secret_key is not None:
        raw = settings.secret_key.get_secret_value().strip()
        if raw.lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(
                "TINBAO_SECRET_KEY is a placeholder: set 32 random bytes in URL-safe base64."
            )
        return _decode_key(raw)
    if not settings.is_embedded_db:
        raise ConfigError(
            "TINBAO_SECRET_KEY is not set: it is required with an external database "
            "(TINBAO_DATABASE_URL). Set 32 random bytes in URL-safe base64."
        )
    path = settings.data_dir / SECRET_KEY_FILE
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}"
            )
        return _decode_key(path.read_text(encoding="ascii").strip())
    if not settings.data_dir.exists():  # only the service's user may enter it
        settings.data_dir.mkdir(parents=True, mode=0o700)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    encoded = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(encoded + "\n")
    return _decode_key(encoded)


def resolve_previous_keys(settings: Settings, current: bytes) -> list[bytes]:
    """The keys of ``TINBAO_PREVIOUS_SECRET_KEYS``, in order: read during a rotation only."""
    keys: list[bytes] = []
    for position, secret in enumerate(settings.previous_secret_keys, start=1):
        variable = f"TINBAO_PREVIOUS_SECRET_KEYS (key {position})"
        raw = secret.get_secret_value().strip()
        if raw.lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(
                f"{variable} is a placeholder: give the key being rotated away from."
            )
        key = _decode_key(raw, variable)
        if key == current:
            raise ConfigError(
                f"{variable} is the same as TINBAO_SECRET_KEY: list only the keys being "
                "rotated away from."
            )
        if key not in keys:
            keys.append(key)
    return keys
