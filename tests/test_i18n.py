"""The catalogues: vi and en hold the same keys and placeholders, and every key used exists."""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

import pytest

from handlers.i18n import LOCALE_DIR, catalogue, pick_locale, t

ROOT = Path(__file__).resolve().parent.parent


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_vi_and_en_hold_the_same_keys():
    vi, en = catalogue("vi"), catalogue("en")
    assert set(vi) - set(en) == set(), "missing in en"
    assert set(en) - set(vi) == set(), "missing in vi"


def test_each_area_file_has_both_languages():
    areas = {p.name.split(".")[0] for p in LOCALE_DIR.glob("*.json")}
    for area in areas:
        vi = (LOCALE_DIR / f"{area}.vi.json").read_text(encoding="utf-8")
        en = (LOCALE_DIR / f"{area}.en.json").read_text(encoding="utf-8")
        assert vi and en


@pytest.mark.parametrize("key", sorted(catalogue("vi")))
def test_placeholders_agree(key):
    assert placeholders(catalogue("vi")[key]) == placeholders(catalogue("en")[key]), key


def test_every_key_used_in_code_exists():
    pattern = re.compile(
        r"""(?:\bt\(\s*[\w.]+\s*,\s*|\.say\(\s*|\.button\(\s*|\.notice\(\s*|\.alert\(\s*)"""
        r"""f?["']([a-z_]+\.[a-z_.{}]+)["']"""
    )
    keys = catalogue("vi")
    missing = []
    for path in [
        *ROOT.glob("handlers/**/*.py"),
        *ROOT.glob("bot/**/*.py"),
        *ROOT.glob("admin/**/*.py"),
    ]:
        for key in pattern.findall(path.read_text(encoding="utf-8")):
            if "{" in key:  # an f-string family such as cat.{key}: check its prefix
                prefix = key.split("{", 1)[0]
                if not any(k.startswith(prefix) for k in keys):
                    missing.append((path.name, key))
            elif key not in keys:
                missing.append((path.name, key))
    assert missing == []


def test_families_are_complete():
    from handlers.domain import CATEGORIES, OUTCOMES, STATUSES

    for locale in ("vi", "en"):
        for key in CATEGORIES:
            assert t(locale, f"cat.{key}")
        for status in STATUSES:
            assert t(locale, f"status.{status}")
        for outcome in OUTCOMES:
            assert t(locale, f"outcome.citizen.{outcome}")


def test_pick_locale():
    assert pick_locale("en-GB") == "en"
    assert pick_locale("vi") == "vi"
    assert pick_locale("fr") == "vi"
    assert pick_locale(None, "en") == "en"


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_no_prose_in_the_flows():
    """Handlers and the runtime hold no literal Vietnamese prose: it lives in the catalogues."""
    vietnamese = re.compile(r"[ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ]", re.I)
    offenders = []
    for path in [*ROOT.glob("handlers/*.py"), *ROOT.glob("bot/*.py"), *ROOT.glob("admin/*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and " " in node.value.strip()
                and vietnamese.search(node.value)
            ):
                offenders.append(f"{path.name}:{node.lineno}: {node.value[:60]!r}")
    assert offenders == []
