"""The product's fixed vocabularies (docs/domain.md): categories, statuses, outcomes, modes."""

from __future__ import annotations

from typing import Final

CATEGORIES: Final = (
    "drugs",
    "theft",
    "robbery",
    "snatch_theft",
    "cyber_fraud",
    "social_evils",
    "border",
    "security",
    "other",
)

STATUSES: Final = (
    "new",
    "assigned",
    "in_progress",
    "needs_info",
    "acknowledged",
    "resolved",
    "rejected",
)

OUTCOMES: Final = (
    "clarified",
    "handled",
    "not_confirmed",
    "false_report",
    "duplicate",
    "out_of_scope",
)

CONTACT_MODES: Final = ("none", "relay", "phone")
DEFAULT_CONTACT_MODE: Final = "relay"

OCCURRED: Final = ("now", "today", "earlier", "unknown")

REPORT_KIND_TIP: Final = "tip"
REPORT_KIND_EMERGENCY: Final = "emergency"

LOCALES: Final = ("vi", "en")
