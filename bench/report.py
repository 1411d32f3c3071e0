"""What every benchmark prints last: one JSON object per figure, each on its own line.

``{"bench": "tip_flow", "backend": "sqlite", "metric": "ratio", "value": 0.31, "unit": "",
"target": 0.5}`` (issue 14), so that figures are collected the same way each time.
"""

from __future__ import annotations

import json


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def figure(
    backend: str, metric: str, value: float, unit: str, target: float | None, bench: str
) -> str:
    return json.dumps(
        {
            "bench": bench,
            "backend": backend,
            "metric": metric,
            "value": round(value, 3),
            "unit": unit,
            "target": target,
        },
        ensure_ascii=False,
    )
