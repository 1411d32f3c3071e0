"""A choropleth of reports per commune, drawn offline from the operator's boundaries.

The boundaries are the ``Polygon``/``MultiPolygon`` features of ``TINBAO_GEOMETRY_FILE`` (the
same file that routes a shared location, read by :class:`handlers.routing.UnitLocator`). They are
projected once per file (equirectangular around the province's middle latitude, which at 10° N
distorts less than the drawing's own line width), simplified to half a pixel and kept as SVG
paths; each request only colours them. No tiles, no web fonts, nothing fetched: the SVG is
self-contained and served as an image like the other charts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

from handlers.routing import UnitLocator

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

WIDTH = 800
MARGIN = 10
LEGEND_HEIGHT = 90
#: Sequential reds, light to dark (ColorBrewer "Reds", 5 classes); no report is grey.
PALETTE = ("#fee5d9", "#fcae91", "#fb6a4a", "#de2d26", "#a50f15")
NONE = "#eef0f3"
STROKE = "#52606d"


@dataclass(frozen=True, slots=True)
class Shapes:
    """The projected boundary of each unit: code → SVG path data; and the drawing's height."""

    paths: dict[str, str]
    height: int


def _ring(coords: object, project: Callable[[float, float], tuple[float, float]]) -> str:
    points = [project(x, y) for x, y, *_ in coords]  # type: ignore[attr-defined]
    if len(points) < 3:
        return ""
    head, *rest = points
    return f"M{head[0]:.1f} {head[1]:.1f}" + "".join(f"L{x:.1f} {y:.1f}" for x, y in rest) + "Z"


def project(boundaries: Mapping[str, BaseGeometry]) -> Shapes:
    """SVG paths of ``boundaries`` (code → lon/lat geometry) fitted to :data:`WIDTH`."""
    if not boundaries:
        return Shapes({}, 0)
    import shapely  # with the first map: a process that draws none does not load it

    min_x, min_y, max_x, max_y = shapely.total_bounds(list(boundaries.values()))
    squash = math.cos(math.radians((min_y + max_y) / 2))
    span_x = max((max_x - min_x) * squash, 1e-9)
    span_y = max(max_y - min_y, 1e-9)
    scale = (WIDTH - 2 * MARGIN) / span_x
    height = math.ceil(span_y * scale + 2 * MARGIN)

    def to_svg(lon: float, lat: float) -> tuple[float, float]:
        return (MARGIN + (lon - min_x) * squash * scale, MARGIN + (max_y - lat) * scale)

    tolerance = 0.5 / scale  # half a pixel, in degrees
    paths: dict[str, str] = {}
    for code, geometry in sorted(boundaries.items()):
        simple = geometry.simplify(tolerance, preserve_topology=True)
        polygons = getattr(simple, "geoms", [simple])
        data = "".join(
            _ring(ring.coords, to_svg)
            for polygon in polygons
            if polygon.geom_type == "Polygon"
            for ring in (polygon.exterior, *polygon.interiors)
        )
        if data:
            paths[code] = data
    return Shapes(paths, height)


_CACHE: dict[tuple[str, int], Shapes] = {}


def shapes_of(path: Path | None, known_units: Mapping[str, object]) -> Shapes | None:
    """The projected boundaries of the geometry file (read once per version of the file);
    None without a file or without a single boundary in it."""
    if path is None:
        return None
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        return None
    shapes = _CACHE.get(key)
    if shapes is None:
        locator = UnitLocator.from_geojson(
            path, known_units=known_units.keys(), default_radius_km=1.0
        )
        shapes = project(locator.boundaries())
        _CACHE.clear()
        _CACHE[key] = shapes
    return shapes if shapes.paths else None


def classes(counts: Mapping[str, int]) -> list[int]:
    """Upper bounds of up to five classes of the non-zero counts (quantiles, distinct)."""
    values = sorted(v for v in counts.values() if v > 0)
    if not values:
        return []
    bounds: list[int] = []
    for i in range(1, len(PALETTE) + 1):
        bound = values[min(len(values) - 1, math.ceil(len(values) * i / len(PALETTE)) - 1)]
        if not bounds or bound > bounds[-1]:
            bounds.append(bound)
    return bounds


def colour(n: int, bounds: list[int]) -> str:
    if n <= 0 or not bounds:
        return NONE
    for i, bound in enumerate(bounds):
        if n <= bound:
            # Fewer classes take the dark end: the highest is always the darkest.
            return PALETTE[len(PALETTE) - len(bounds) + i]
    return PALETTE[-1]


def render(
    shapes: Shapes,
    counts: Mapping[str, int],
    *,
    title: str,
    name: Callable[[str], str],
    no_reports: str,
) -> bytes:
    """The map: every unit with a boundary, coloured by its count, named in its tooltip, and a
    legend of the classes."""
    bounds = classes({code: counts.get(code, 0) for code in shapes.paths})
    height = shapes.height + LEGEND_HEIGHT
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="13" '
        'role="img">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<g stroke="{STROKE}" stroke-width="0.6" stroke-linejoin="round" fill-rule="evenodd">',
    ]
    for code, data in shapes.paths.items():
        n = counts.get(code, 0)
        out.append(
            f'<path id={quoteattr("unit-" + code)} d="{data}" fill="{colour(n, bounds)}">'
            f"<title>{escape(name(code))}: {n}</title></path>"
        )
    out.append("</g>")
    top = shapes.height + 20
    out.append(f'<text x="{MARGIN}" y="{top}" font-weight="bold">{escape(title)}</text>')
    legend = [(NONE, no_reports)]
    low = 1
    for bound in bounds:
        legend.append((colour(bound, bounds), f"{low}–{bound}" if bound > low else f"{bound}"))
        low = bound + 1
    for i, (fill, label) in enumerate(legend):
        x = MARGIN + i * 130
        out.append(
            f'<rect x="{x}" y="{top + 14}" width="22" height="16" fill="{fill}" '
            f'stroke="{STROKE}" stroke-width="0.6"/>'
            f'<text x="{x + 28}" y="{top + 27}">{escape(label)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out).encode()
