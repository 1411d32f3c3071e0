"""Labels for templates, charts, exports and the printed report, in one locale: catalogue
keys, and the names of units, queues, categories, statuses and outcomes."""

from __future__ import annotations

from typing import Any

from admin.queries import EMERGENCY_CATEGORY
from config.catalogue import Catalogue
from config.queues import QueueMap
from handlers.domain import CATEGORIES, OUTCOMES, STATUSES
from handlers.i18n import catalogue as messages
from handlers.i18n import t
from handlers.officers import ROLES


class Labels:
    """Labels for templates and exports, in one locale."""

    def __init__(self, locale: str, catalogue: Catalogue, queues: QueueMap) -> None:
        self.locale = locale
        self.catalogue = catalogue
        self.queues = queues

    def __call__(self, key: str, **values: Any) -> str:
        return t(self.locale, key, **values)

    def status(self, key: str) -> str:
        return self(f"officer.status.{key}") if key in STATUSES else key

    def category(self, key: str | None) -> str:
        if key == EMERGENCY_CATEGORY:
            return self("admin.cat.accident")
        return self(f"cat.{key}") if key in CATEGORIES else self("cat.other")

    def outcome(self, key: str | None) -> str:
        return self(f"outcome.{key}") if key in OUTCOMES else (key or "")

    def role(self, key: str) -> str:
        return self(f"role.{key}") if key in ROLES else key

    def unit(self, code: str | None) -> str:
        if not code:
            return self("admin.unit.none")
        entry = self.catalogue.by_code.get(code)
        return entry.name if entry else code

    def queue(self, key: str | None) -> str:
        queue = self.queues.by_key(key) if key else None
        return queue.name if queue else (key or "")

    def action(self, key: str) -> str:
        name = f"admin.action.{key}"
        return self(name) if name in messages(self.locale) else key

    def duration(self, seconds: float | None) -> str:
        if seconds is None:
            return "—"
        minutes = round(seconds / 60)
        if minutes < 60:
            return self("admin.duration.minutes", m=minutes)
        return self("admin.duration.hours", h=minutes // 60, m=minutes % 60)
