"""Pick the receiving unit from a location the citizen shared.

The unit catalogue has no coordinates; the operator supplies them as a GeoJSON
``FeatureCollection`` (``TINBAO_GEOMETRY_FILE``).  Each feature is one unit:

* ``properties.code`` is the unit code from the catalogue (``"30307"`` = Phường Long
  Xuyên).  ``properties.ma_xa`` and ``properties.ma`` are accepted as aliases (common in
  Vietnamese GIS exports); the first one present is used, in that order.  A JSON number is
  accepted and read as its decimal digits.
* A ``Polygon`` or ``MultiPolygon`` geometry is the unit's boundary.  Several boundary
  features with the same code are merged.  An invalid ring (self-intersection, ...) is
  repaired with ``make_valid``; the file is refused if nothing polygonal is left.
* A ``Point`` geometry is the unit's centre.  ``properties.radius_km`` (optional, > 0)
  overrides the default radius (``TINBAO_CENTRE_RADIUS_KM``).  One centre per unit.
* Coordinates are ``[longitude, latitude]`` (WGS 84), as GeoJSON requires.

Lookup (:meth:`UnitLocator.locate`):

1. a point inside (or on the edge of) a boundary picks that unit; where boundaries overlap,
   the smallest one containing the point wins (ties: the lowest code);
2. otherwise the nearest centre whose radius contains the point, by great-circle distance;
3. otherwise None, and the caller routes the report to the provincial duty queue.

Without a geometry file :meth:`UnitLocator.empty` locates nothing and the citizen picks the
commune by name (``handlers.places``).

This module must not import ``telegram``. numpy and shapely (~20 MB) are imported when a
geometry file is read: a service without one (or a panel that never draws the map) never loads
them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from shapely.geometry.base import BaseGeometry

#: Mean Earth radius (IUGG), km.
EARTH_RADIUS_KM = 6371.0088

#: Property names holding the unit code, in order of preference.
CODE_PROPERTIES = ("code", "ma_xa", "ma")

_POLYGONAL = ("Polygon", "MultiPolygon")

#: A boundary smaller than this (square degrees, about 1 m²) is degenerate, not a unit.
MIN_AREA_DEG2 = 1e-10


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def valid_coordinates(latitude: float, longitude: float) -> bool:
    """True for finite numbers with -90 <= latitude <= 90 and -180 <= longitude <= 180."""
    try:
        lat, lon = float(latitude), float(longitude)
    except (TypeError, ValueError):
        return False
    return math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180


@dataclass(frozen=True, slots=True)
class Centre:
    """A unit's centre point and the radius (km) within which it claims a location."""

    code: str
    latitude: float
    longitude: float
    radius_km: float


class UnitLocator:
    """Maps a shared location to a unit code, from operator-supplied boundaries and centres."""

    __slots__ = (
        "_areas",
        "_boundaries",
        "_boundary_codes",
        "_centre_cos_lat",
        "_centre_lat",
        "_centre_lon",
        "_centre_radius",
        "_centres",
        "_tree",
        "_units",
    )

    def __init__(
        self,
        boundaries: Mapping[str, BaseGeometry] | None = None,
        centres: Collection[Centre] = (),
    ) -> None:
        """Build from boundaries (code -> polygonal geometry, lon/lat) and centres.

        Prefer :meth:`from_geojson` or :meth:`empty`; this constructor does not validate codes.
        """
        items = sorted((boundaries or {}).items())
        self._boundary_codes: tuple[str, ...] = tuple(code for code, _ in items)
        self._boundaries: Any = ()
        self._areas: tuple[float, ...] = ()
        self._tree: Any = None
        if items:
            import numpy as np
            import shapely

            geoms = np.array([geom for _, geom in items], dtype=object)
            shapely.prepare(geoms)
            self._boundaries = geoms
            self._areas = tuple(float(a) for a in shapely.area(geoms))
            self._tree = shapely.STRtree(geoms)

        ordered = sorted(centres, key=lambda c: c.code)
        self._centres: tuple[Centre, ...] = tuple(ordered)
        self._centre_lat: np.ndarray[Any, Any] | None = None
        self._centre_lon: np.ndarray[Any, Any] | None = None
        self._centre_cos_lat: np.ndarray[Any, Any] | None = None
        self._centre_radius: np.ndarray[Any, Any] | None = None
        if ordered:
            import numpy as np

            self._centre_lat = np.radians(np.array([c.latitude for c in ordered], dtype=float))
            self._centre_lon = np.radians(np.array([c.longitude for c in ordered], dtype=float))
            self._centre_cos_lat = np.cos(self._centre_lat)
            self._centre_radius = np.array([c.radius_km for c in ordered], dtype=float)
        self._units = frozenset(self._boundary_codes) | {c.code for c in ordered}

    # ----------------------------------------------------------------------- construction

    @classmethod
    def empty(cls) -> UnitLocator:
        """A locator without geometry: :meth:`locate` always returns None."""
        return cls()

    @classmethod
    def from_geojson(
        cls, path: Path, *, known_units: Collection[str], default_radius_km: float
    ) -> UnitLocator:
        """Read and validate an operator's GeoJSON file (see the module docstring).

        Raises ``ValueError`` naming the file (and the feature index) for a missing or
        unreadable file, invalid JSON, a shape that is not a FeatureCollection, a missing or
        unknown unit code, an unsupported or malformed geometry, coordinates out of range
        (often latitude and longitude swapped), a polygon that cannot be repaired, a bad
        ``radius_km`` and a second centre for one unit.
        """
        path = Path(path)
        if not (math.isfinite(default_radius_km) and default_radius_km > 0):
            raise ValueError(f"default centre radius must be > 0 km, got {default_radius_km!r}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"Geometry file {path}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"Geometry file {path}: cannot be read ({exc})") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"Geometry file {path}: not valid JSON ({exc})") from exc
        return _parse_geojson(raw, path, frozenset(known_units), float(default_radius_km))

    # ----------------------------------------------------------------------- queries

    @property
    def has_geometry(self) -> bool:
        """True when at least one boundary or centre is loaded."""
        return bool(self._units)

    def boundaries(self) -> dict[str, BaseGeometry]:
        """Unit code → its boundary (lon/lat), for the units that have one (the panel's map)."""
        return dict(zip(self._boundary_codes, self._boundaries, strict=True))

    @property
    def units(self) -> frozenset[str]:
        """The codes of all units with a boundary or a centre."""
        return self._units

    def __len__(self) -> int:
        """The number of units with a boundary or a centre."""
        return len(self._units)

    def locate(self, latitude: float, longitude: float) -> str | None:
        """The unit code for a location, or None (no geometry covers it, or bad coordinates)."""
        if not valid_coordinates(latitude, longitude):
            return None
        lat, lon = float(latitude), float(longitude)
        code = self._in_boundary(lat, lon)
        if code is None:
            code = self._near_centre(lat, lon)
        return code

    def _in_boundary(self, lat: float, lon: float) -> str | None:
        if self._tree is None:
            return None
        import shapely

        candidates = self._tree.query(shapely.Point(lon, lat))
        best: tuple[float, str] | None = None
        for index in candidates:
            geom = self._boundaries[index]
            if shapely.intersects_xy(geom, lon, lat):
                key = (self._areas[index], self._boundary_codes[index])
                if best is None or key < best:
                    best = key
        return None if best is None else best[1]

    def _near_centre(self, lat: float, lon: float) -> str | None:
        if not self._centres:
            return None
        import numpy as np

        assert self._centre_lat is not None and self._centre_lon is not None
        assert self._centre_cos_lat is not None and self._centre_radius is not None
        phi = math.radians(lat)
        dphi = self._centre_lat - phi
        dlambda = self._centre_lon - math.radians(lon)
        a = np.sin(dphi / 2) ** 2 + math.cos(phi) * self._centre_cos_lat * np.sin(dlambda / 2) ** 2
        distance = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(a, 1.0)))
        inside = distance <= self._centre_radius
        if not inside.any():
            return None
        # Nearest among the centres that claim the point; ties go to the lowest code (the
        # centres are sorted by code and argmin returns the first minimum).
        index = int(np.argmin(np.where(inside, distance, np.inf)))
        return self._centres[index].code

    def __repr__(self) -> str:
        return f"UnitLocator(boundaries={len(self._boundary_codes)}, centres={len(self._centres)})"


# --------------------------------------------------------------------------- parsing


def _parse_geojson(
    raw: Any, path: Path, known_units: frozenset[str], default_radius_km: float
) -> UnitLocator:
    def fail(message: str) -> ValueError:
        return ValueError(f"Geometry file {path}: {message}")

    if not isinstance(raw, dict) or raw.get("type") != "FeatureCollection":
        raise fail("top level must be a GeoJSON FeatureCollection")
    features = raw.get("features")
    if not isinstance(features, list):
        raise fail("'features' must be a list")

    parts: dict[str, list[BaseGeometry]] = {}
    centres: dict[str, Centre] = {}
    for index, feature in enumerate(features):
        where = f"features[{index}]"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise fail(f"{where} is not a GeoJSON Feature")
        properties = feature.get("properties")
        if not isinstance(properties, dict):
            raise fail(f"{where} has no properties (it needs a unit code in 'code')")
        code = _feature_code(properties)
        if code is None:
            raise fail(f"{where} has no unit code (property {' / '.join(CODE_PROPERTIES)})")
        where = f"{where} (unit {code})"
        if code not in known_units:
            raise fail(f"{where}: unknown unit code {code!r} (not in the unit catalogue)")

        geometry = feature.get("geometry")
        if not isinstance(geometry, dict):
            raise fail(f"{where} has no geometry")
        kind = geometry.get("type")
        if kind == "Point":
            if code in centres:
                raise fail(f"{where}: unit {code} already has a centre point")
            centres[code] = _parse_centre(
                geometry, properties, code, default_radius_km, where, fail
            )
        elif kind in _POLYGONAL:
            parts.setdefault(code, []).append(_parse_boundary(geometry, where, fail))
        else:
            raise fail(
                f"{where}: unsupported geometry type {kind!r} (use Polygon, MultiPolygon or Point)"
            )

    boundaries: dict[str, BaseGeometry] = {}
    for code, geoms in parts.items():
        boundaries[code] = geoms[0] if len(geoms) == 1 else _union(geoms)
    return UnitLocator(boundaries, tuple(centres.values()))


def _union(geoms: list[BaseGeometry]) -> BaseGeometry:
    import shapely

    return shapely.union_all(geoms)


def _feature_code(properties: Mapping[str, Any]) -> str | None:
    for name in CODE_PROPERTIES:
        value = properties.get(name)
        if value is None:
            continue
        if isinstance(value, bool):
            return repr(value)
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
        return repr(value)  # a float, list, ...: reported as an unknown code
    return None


def _parse_centre(
    geometry: Mapping[str, Any],
    properties: Mapping[str, Any],
    code: str,
    default_radius_km: float,
    where: str,
    fail: Callable[[str], ValueError],
) -> Centre:
    coords = geometry.get("coordinates")
    if (
        not isinstance(coords, list)
        or len(coords) not in (2, 3)
        or not all(_is_number(c) for c in coords)
    ):
        raise fail(f"{where}: a Point needs coordinates [longitude, latitude], got {coords!r}")
    lon, lat = float(coords[0]), float(coords[1])
    if not valid_coordinates(lat, lon):
        raise fail(f"{where}: {_range_message(lon, lat)}")
    radius = properties.get("radius_km", default_radius_km)
    if not _is_number(radius) or not (math.isfinite(radius) and radius > 0):
        raise fail(f"{where}: radius_km must be a number > 0, got {radius!r}")
    return Centre(code=code, latitude=lat, longitude=lon, radius_km=float(radius))


def _parse_boundary(
    geometry: Mapping[str, Any], where: str, fail: Callable[[str], ValueError]
) -> BaseGeometry:
    import shapely
    from shapely.geometry import shape

    try:
        geom = shape(geometry)
    except Exception as exc:  # shapely raises ValueError, TypeError, GEOSException, ...
        raise fail(f"{where}: malformed {geometry.get('type')} ({exc})") from exc
    if geom.is_empty:
        raise fail(f"{where}: the {geom.geom_type} is empty")
    minx, miny, maxx, maxy = geom.bounds
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)) or not (
        valid_coordinates(miny, minx) and valid_coordinates(maxy, maxx)
    ):
        raise fail(f"{where}: {_range_message(minx, miny, maxx, maxy)}")
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        repaired = _polygonal_part(shapely.make_valid(geom))
        if repaired is None:
            raise fail(f"{where}: invalid {geom.geom_type} ({reason}) that cannot be repaired")
        geom = repaired
    if geom.area < MIN_AREA_DEG2:
        raise fail(f"{where}: the {geom.geom_type} has no area (degenerate ring?)")
    return geom


def _polygonal_part(geom: BaseGeometry) -> BaseGeometry | None:
    """The polygons of a (repaired) geometry, or None if it holds no area."""
    import shapely

    if geom.geom_type in _POLYGONAL:
        return None if geom.is_empty or geom.area < MIN_AREA_DEG2 else geom
    if geom.geom_type == "GeometryCollection":
        polygons = [
            part
            for part in shapely.get_parts(geom)
            if part.geom_type in _POLYGONAL and not part.is_empty
        ]
        if polygons:
            merged = shapely.union_all(polygons)
            return merged if merged.area >= MIN_AREA_DEG2 else None
    return None


def _range_message(*values: float) -> str:
    return (
        f"coordinates out of range ({', '.join(f'{v:g}' for v in values)}); GeoJSON is "
        "[longitude, latitude] in degrees: are latitude and longitude swapped?"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
