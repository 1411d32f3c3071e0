"""The statistics map: a choropleth of reports per commune drawn from the operator's GeoJSON,
offline (nothing fetched), on the panel when a geometry file is configured (SQLite and
PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from admin.stats import choropleth
from admin.web import build_web_app
from bot.runtime import Service
from config.catalogue import load_catalogue
from config.settings import Settings
from tests.e2e import TEST_SECRET_KEY
from tests.test_admin import Env

GEOMETRY = Path(__file__).parent / "data" / "geometry_small.geojson"
BOUNDARY_UNITS = {"30307", "30316", "30301", "31078"}


def _fills(svg: str) -> dict[str, str]:
    return dict(re.findall(r'<path id="unit-(\d+)" d="[^"]+" fill="(#[0-9a-f]{6})"', svg))


def test_every_boundary_is_drawn_and_coloured_by_its_count() -> None:
    catalogue = load_catalogue()
    shapes = choropleth.shapes_of(GEOMETRY, catalogue.by_code)
    assert shapes is not None and set(shapes.paths) == BOUNDARY_UNITS
    # The two-island unit is one path with two rings.
    assert shapes.paths["31078"].count("M") == 2
    counts = {"30307": 40, "30316": 3, "31078": 1}
    svg = choropleth.render(
        shapes, counts, title="Reports <per> commune", name=lambda c: f"Unit & {c}", no_reports="0"
    ).decode()
    fills = _fills(svg)
    assert fills["30301"] == choropleth.NONE  # no report
    assert fills["30307"] == choropleth.PALETTE[-1]  # the most
    assert fills["31078"] != fills["30307"] and fills["31078"] in choropleth.PALETTE
    assert "<title>Unit &amp; 30307: 40</title>" in svg
    assert "Reports &lt;per&gt; commune" in svg
    # Self-contained: no link, image, font or script, nothing to fetch.
    assert "href" not in svg and "<script" not in svg and "url(" not in svg
    assert re.findall(r"https?://[^\"]+", svg) == ["http://www.w3.org/2000/svg"]


def test_classes_are_distinct_and_cover_the_largest() -> None:
    assert choropleth.classes({}) == []
    assert choropleth.classes({"a": 0}) == []
    assert choropleth.classes({"a": 5, "b": 5}) == [5]
    bounds = choropleth.classes({str(i): i for i in range(1, 101)})
    assert bounds == [20, 40, 60, 80, 100]
    assert choropleth.colour(0, bounds) == choropleth.NONE
    assert choropleth.colour(1, bounds) == choropleth.PALETTE[0]
    assert choropleth.colour(100, bounds) == choropleth.PALETTE[-1]


@pytest.fixture
async def map_env(db_url: str, engine: object, tmp_path: Path) -> AsyncIterator[Env]:
    settings = Settings(
        database_url=db_url,
        secret_key=TEST_SECRET_KEY,
        data_dir=tmp_path,
        geometry_file=GEOMETRY,
    )
    service = await Service.create(settings)
    client = TestClient(TestServer(build_web_app(service)))
    await client.start_server()
    try:
        yield Env(service, client, "30307", "30316")
    finally:
        await client.close()
        await service.stop()


async def test_the_panel_shows_the_map_with_the_filters(map_env: Env) -> None:
    env = map_env
    await env.add_officer("chihuy", "admin")
    assert await env.login("chihuy") in (302, 303)
    when = datetime(2025, 6, 10, 5, tzinfo=UTC)
    for _ in range(3):
        await env.add_report("30307", created_at=when)
    await env.add_report("30316", created_at=when, category="drugs")
    page = await env.client.get("/admin/stats?period=2025-06")
    assert page.status == 200
    assert 'id="map"' in await page.text()
    response = await env.client.get("/admin/stats/chart/map.svg?period=2025-06")
    assert response.status == 200 and response.content_type == "image/svg+xml"
    assert "script-src" not in response.headers.get("Content-Security-Policy", "script-src")
    fills = _fills(await response.text())
    assert fills["30307"] == choropleth.PALETTE[-1] and fills["30301"] == choropleth.NONE
    # The filters apply to the map as to every view: only drugs.
    drugs = await env.client.get("/admin/stats/chart/map.svg?period=2025-06&category=drugs")
    fills = _fills(await drugs.text())
    assert fills["30307"] == choropleth.NONE and fills["30316"] == choropleth.PALETTE[-1]


async def test_no_geometry_file_no_map(tmp_path: Path, db_url: str, engine: object) -> None:
    settings = Settings(database_url=db_url, secret_key=TEST_SECRET_KEY, data_dir=tmp_path)
    service = await Service.create(settings)
    client = TestClient(TestServer(build_web_app(service)))
    await client.start_server()
    env = Env(service, client, "30307", "30316")
    try:
        await env.add_officer("chihuy", "admin")
        assert await env.login("chihuy") in (302, 303)
        assert 'id="map"' not in await (await client.get("/admin/stats")).text()
        assert (await client.get("/admin/stats/chart/map.svg")).status == 404
    finally:
        await client.close()
        await service.stop()
