"""Payout instructions for rewarded tipsters: a configurable text per unit (data, not code).

The file (``TINBAO_REWARD_INSTRUCTIONS_FILE``) is TOML::

    default = "Bring the claim code to ..."
    [units]
    "30307" = "Phường Long Xuyên police station, 12 Lý Thái Tổ, weekdays 7:30-17:00"

Without a file, or for a unit not listed, the catalogue's default text is used.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PayoutInstructions:
    default: str | None = None
    units: Mapping[str, str] = field(default_factory=dict)

    def for_unit(self, unit_code: str | None) -> str | None:
        if unit_code is not None and unit_code in self.units:
            return self.units[unit_code]
        return self.default


def load_instructions(path: Path | None, *, known_units: Collection[str]) -> PayoutInstructions:
    if path is None:
        return PayoutInstructions()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read payout instructions: {exc}") from exc
    default = data.get("default")
    units = data.get("units", {})
    if default is not None and (not isinstance(default, str) or not default.strip()):
        raise ValueError(f"{path}: 'default' must be a non-empty string")
    if not isinstance(units, dict):
        raise ValueError(f"{path}: [units] must be a table of unit code = text")
    for code, text in units.items():
        if code not in known_units:
            raise ValueError(f"{path}: unknown unit code {code!r} in [units]")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: the text for unit {code!r} must be a non-empty string")
    return PayoutInstructions(default=default, units=dict(units))
