"""The printable reports as PDF, rendered by WeasyPrint from the same HTML and print stylesheet
as the page the commander prints from the browser.

WeasyPrint (BSD, maintained by CourtBouillon, frequent releases) lays out HTML and CSS with
the print rules (``@page``, ``@media print``) and draws SVG, so the PDF is the report page
itself, charts included, with no second layout to keep in step. It needs Pango (Debian
``libpango-1.0-0``, ``libpangoft2-1.0-0``). Nothing is fetched while rendering: the
stylesheet and the charts are handed over in memory, and every other URL is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from weasyprint import HTML
from weasyprint.urls import URLFetcher, URLFetcherResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
# The panel's stylesheet holds screen rules WeasyPrint does not know; one warning per rule and
# report would drown the log.
logging.getLogger("weasyprint").setLevel(logging.ERROR)

#: The origin the report's links are resolved against; never contacted.
BASE_URL = "http://tinbao.invalid/"


class InMemory(URLFetcher):
    """Serves the given paths (``/admin/...``) from memory and refuses everything else."""

    def __init__(self, resources: Mapping[str, tuple[bytes, str]]) -> None:
        super().__init__(allowed_protocols=())
        self.resources = resources

    def fetch(self, url: str, headers: object = None) -> URLFetcherResponse:
        parts = urlsplit(url)
        found = self.resources.get(parts.path) if url.startswith(BASE_URL) else None
        if found is None:
            raise ValueError(f"not fetched while rendering a report: {url}")
        body, mime = found
        return URLFetcherResponse(url, body=body, headers={"Content-Type": mime})


def stylesheet(prefix: str) -> dict[str, tuple[bytes, str]]:
    return {f"{prefix}/static/admin.css": ((STATIC / "admin.css").read_bytes(), "text/css")}


def to_pdf(html: str, resources: Mapping[str, tuple[bytes, str]]) -> bytes:
    """The PDF of ``html`` (a whole page), its URLs answered from ``resources``."""
    pdf: bytes = HTML(string=html, base_url=BASE_URL, url_fetcher=InMemory(resources)).write_pdf()
    return pdf
