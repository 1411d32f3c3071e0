"""What a process loads at start: the libraries for exports, PDFs, charts, maps and migrations
are imported when they are used, not with the service or the panel (issue 14, P5 memory)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Imported on first use only: XLSX exports, PDF reports and PDF attachments, charts, the map
#: and geometry, migrations.
LAZY = (
    "openpyxl",
    "weasyprint",
    "pikepdf",
    "pygal",
    "lxml",
    "numpy",
    "shapely",
    "alembic",
    "mako",
)


def loaded_after(code: str) -> tuple[list[str], int | None]:
    """Run ``code`` in a fresh interpreter; which of :data:`LAZY` (and a few more) it loaded."""
    probe = (
        f"{code}\n"
        "import json, sys\n"
        "names = " + repr((*LAZY, "jinja2", "admin.auth", "admin.context")) + "\n"
        "extra = {}\n"
        "auth = sys.modules.get('admin.auth')\n"
        "if auth is not None:\n"
        "    extra['dummy_hashes'] = auth._dummy_hash.cache_info().currsize\n"
        "print(json.dumps({'loaded': [n for n in names if n in sys.modules], **extra}))\n"
    )
    done = subprocess.run(  # noqa: S603 (the test's own fixed code)
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return list(result["loaded"]), result.get("dummy_hashes")


def test_the_service_loads_no_export_pdf_chart_map_or_migration_library() -> None:
    loaded, _ = loaded_after("import bot.runtime, bot.cli")
    assert [name for name in loaded if name in LAZY] == []
    # Nor the panel's context (the login's argon2, Jinja2): the panel imports it when built.
    assert "admin.context" not in loaded and "jinja2" not in loaded


def test_the_panel_loads_no_export_pdf_chart_map_or_migration_library() -> None:
    loaded, dummy_hashes = loaded_after(
        "import admin.web, admin.panel, bot.web, bot.web.report_pages"
    )
    assert [name for name in loaded if name in LAZY] == []
    assert "admin.auth" in loaded
    assert dummy_hashes == 0  # no argon2 hash at import


@pytest.mark.parametrize(
    ("code", "library"),
    [
        (
            "import admin.exports as e; e.to_xlsx([('total', 'k', 'l', 1)], ('s', 'k', 'l', 'v'), "
            "sheet_titles={})",
            "openpyxl",
        ),
        (
            "from handlers.routing import UnitLocator, Centre; "
            "UnitLocator(None, [Centre('1', 10.0, 105.0, 1.0)]).locate(10.0, 105.0)",
            "numpy",
        ),
        (
            "import asyncio; from storage.migrate import upgrade; from storage.db import "
            "create_engine; asyncio.run(upgrade(create_engine('sqlite+aiosqlite://')))",
            "alembic",
        ),
    ],
)
def test_a_lazy_library_is_loaded_when_used(code: str, library: str) -> None:
    assert library in loaded_after(code)[0]
