"""The printable monthly and yearly reports as PDF (WeasyPrint): one A4 page whose figures equal
a recount from the reports table, for a seeded month and a seeded year, on SQLite and
PostgreSQL; nothing is fetched while rendering."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader

from admin.queries import Period, summary
from admin.queries import stats as direct_stats
from admin.stats import pdf
from handlers.i18n import t
from tests.test_admin import Env, _seed_year, env  # noqa: F401 (the panel fixture)


def _lines(body: bytes) -> tuple[int, list[str]]:
    reader = PdfReader(io.BytesIO(body))
    text = "\n".join(page.extract_text() for page in reader.pages)
    return len(reader.pages), [" ".join(line.split()) for line in text.splitlines()]


def _value(lines: list[str], label: str) -> str:
    """The figure printed after ``label`` on its line."""
    for line in lines:
        if line.startswith(label):
            return line[len(label) :].strip()
    raise AssertionError(f"{label!r} not in {lines}")


@pytest.mark.parametrize("month", [True, False], ids=["month", "year"])
async def test_the_pdf_report_equals_a_recount(env: Env, month: bool) -> None:  # noqa: F811
    year = await _seed_year(env)
    await env.add_officer("chihuy", "admin")
    assert await env.login("chihuy") in (302, 303)
    key = f"{year}-06" if month else str(year)
    response = await env.client.get(f"/admin/stats/report.pdf?period={key}")
    assert response.status == 200, await response.text()
    assert response.content_type == "application/pdf"
    assert f"tinbao-report-{key}.pdf" in response.headers["Content-Disposition"]
    body = await response.read()
    assert body.startswith(b"%PDF-")
    pages, lines = _lines(body)
    assert pages == 1
    period = Period.parse(key)
    async with env.service.session_factory() as db:
        direct = await direct_stats(db, period, None)
        notice = await summary(db, period, None)
    assert t("vi", "stats.report.title", period=period.label) in " ".join(lines)
    assert _value(lines, t("vi", "stats.report.received")) == str(direct.total) == "7"
    assert _value(lines, t("vi", "stats.report.clarified")) == str(notice.clarified) == "4"
    assert _value(lines, t("vi", "stats.report.subjects")) == str(notice.subjects_handled)
    assert _value(lines, t("vi", "stats.report.arrests")) == "3"
    assert _value(lines, "— " + t("vi", "cat.theft")) == "2"
    assert _value(lines, "— " + t("vi", "cat.robbery")) == "1"
    # The three charts are drawn in the PDF (their titles are text in the SVG).
    assert any(t("vi", "stats.chart.trend") in line for line in lines)


async def test_the_yearly_report_is_linked_from_the_page(env: Env) -> None:  # noqa: F811
    await env.add_officer("chihuy", "admin")
    assert await env.login("chihuy") in (302, 303)
    page = await (await env.client.get("/admin/stats?period=2025-06")).text()
    assert 'id="yearly-report"' in page and "/admin/stats/report?period=2025" in page
    assert "/admin/stats/report.pdf?period=2025-06" in page


def test_nothing_is_fetched_while_rendering() -> None:
    html = (
        '<html><head><link rel="stylesheet" href="https://cdn.example.org/x.css">'
        '<link rel="stylesheet" href="/admin/static/admin.css"></head>'
        '<body><img src="file:///etc/passwd"><img src="http://127.0.0.1:9/x.svg">'
        "<p>Báo cáo</p></body></html>"
    )
    fetched: list[str] = []

    class Spy(pdf.InMemory):
        def fetch(self, url: str, headers: object = None):
            fetched.append(url)
            return super().fetch(url, headers)

    resources = pdf.stylesheet("/admin")
    body = pdf.HTML(string=html, base_url=pdf.BASE_URL, url_fetcher=Spy(resources)).write_pdf()
    assert body.startswith(b"%PDF-")
    # Every URL went through the in-memory fetcher; only the stylesheet was answered.
    assert "http://tinbao.invalid/admin/static/admin.css" in fetched
    assert len(fetched) == 4
