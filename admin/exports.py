"""CSV and XLSX exports of a period's statistics and the notice's summary figures.

openpyxl (~25 MB) is imported with the first XLSX export, not with the panel."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from admin.stats.queries import Figures

Label = Callable[[str], str]


def rows(
    fig: Figures,
    money: Any,
    arrest_kinds: list[tuple[str, int]],
    *,
    t: Label,
    unit_name: Label,
    category: Label,
    status: Label,
) -> list[tuple[str, str, str, int]]:
    """Flat rows ``(section, key, label, value)``, the same in both formats."""
    out: list[tuple[str, str, str, int]] = [
        ("total", "reports", t("admin.stats.total"), fig.received)
    ]
    out += [("status", k, status(k), v) for k, v in sorted(fig.by_status.items())]
    out += [
        ("category", k, category(k), v)
        for k, v in sorted(fig.by_category.items(), key=lambda kv: -kv[1])
    ]
    out += [
        ("unit", k, unit_name(k), v) for k, v in sorted(fig.by_unit.items(), key=lambda kv: -kv[1])
    ]
    out += [
        ("summary", "clarified", t("admin.summary.clarified"), fig.clarified),
        ("summary", "subjects_handled", t("admin.summary.subjects"), fig.subjects),
        ("summary", "assisted_arrests", t("admin.summary.arrests"), fig.assisted),
        ("summary", "rewards_paid", t("admin.summary.rewards_count"), money.paid),
        ("summary", "rewards_paid_vnd", t("admin.summary.rewards_total"), money.paid_vnd),
        ("summary", "commendations", t("stats.report.commendations"), money.commendations),
    ]
    out += [
        ("summary", f"commendations_{kind}", t(f"commendation.kind.{kind}"), n)
        for kind, n in sorted(getattr(money, "commended", {}).items())
    ]
    out += [
        ("assisted_arrests", k, category(k), v)
        for k, v in sorted(fig.assisted_by_category.items(), key=lambda kv: -kv[1])
    ]
    out += [("arrest_kinds", k, category(k), v) for k, v in arrest_kinds]
    return out


def _safe(value: str) -> str:
    """No spreadsheet formula injection: a cell never starts with = + - @."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def to_csv(data: list[tuple[str, str, str, int]], header: tuple[str, str, str, str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for section, key, label, value in data:
        writer.writerow([section, _safe(key), _safe(label), value])
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")  # BOM: Excel reads UTF-8


def to_xlsx(
    data: list[tuple[str, str, str, int]],
    header: tuple[str, str, str, str],
    *,
    sheet_titles: dict[str, str],
) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    default = book.active
    book.remove(default)
    sections: dict[str, list[tuple[str, str, int]]] = {}
    for section, key, label, value in data:
        sections.setdefault(section, []).append((key, label, value))
    for section, items in sections.items():
        sheet = book.create_sheet(title=sheet_titles.get(section, section)[:31])
        sheet.append(list(header[1:]))
        for cell in sheet[1]:
            cell.font = Font(bold=True)
        for key, label, value in items:
            sheet.append([_safe(key), _safe(label), value])
        sheet.column_dimensions["A"].width = 18
        sheet.column_dimensions["B"].width = 48
        sheet.column_dimensions["C"].width = 16
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
