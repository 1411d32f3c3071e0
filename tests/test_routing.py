"""The routing table: shared location -> unit (handlers.routing) and unit -> queue (config.queues).

Geometry is the SYNTHETIC ``tests/data/geometry_small.geojson`` (invented squares and points for
real unit codes); queues are ``tests/data/queues_small.toml``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import shapely

from config.catalogue import load_catalogue
from config.queues import (
    DUTY_KEY,
    EXAMPLE_QUEUES_PATH,
    Queue,
    QueueMap,
    duty_queue,
    load_queue_map,
)
from handlers.routing import Centre, UnitLocator, haversine_km

DATA = Path(__file__).parent / "data"
GEOMETRY = DATA / "geometry_small.geojson"
QUEUES = DATA / "queues_small.toml"

DUTY_CHAT = -1001000000009
LX_CHAT = -1001000000001
FORUM_CHAT = -1001000000002

LONG_XUYEN, BINH_DUC, MY_THOI = "30307", "30292", "30301"
CHAU_DOC, VINH_TE, PHU_QUOC = "30316", "30325", "31078"

CATALOGUE = load_catalogue()
KNOWN = frozenset(CATALOGUE.by_code)


@pytest.fixture(scope="module")
def locator() -> UnitLocator:
    return UnitLocator.from_geojson(GEOMETRY, known_units=KNOWN, default_radius_km=5.0)


@pytest.fixture(scope="module")
def queues() -> QueueMap:
    return load_queue_map(QUEUES, duty_chat_id=DUTY_CHAT, duty_thread_id=None, known_units=KNOWN)


def route(locator: UnitLocator, queues: QueueMap, lat: float, lon: float) -> Queue | None:
    return queues.resolve(locator.locate(lat, lon))


# --------------------------------------------------------------------------- haversine


def test_haversine_one_degree_of_latitude_is_about_111_km() -> None:
    assert haversine_km(10.0, 105.0, 11.0, 105.0) == pytest.approx(111.2, abs=0.3)
    assert haversine_km(0.0, 0.0, 0.0, 1.0) == pytest.approx(111.2, abs=0.3)
    # A degree of longitude shrinks with the cosine of the latitude.
    assert haversine_km(60.0, 0.0, 60.0, 1.0) == pytest.approx(55.6, abs=0.3)


def test_haversine_properties() -> None:
    assert haversine_km(10.38, 105.43, 10.38, 105.43) == 0.0
    d = haversine_km(10.38, 105.43, 10.70, 105.12)
    assert d == pytest.approx(haversine_km(10.70, 105.12, 10.38, 105.43))
    assert 45 < d < 50  # Long Xuyên -> Châu Đốc as the crow flies, roughly
    # Antipodes: half the circumference, no domain error from rounding.
    assert haversine_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * 6371.0, rel=1e-3)


# --------------------------------------------------------------------------- locating


def test_loaded_file(locator: UnitLocator) -> None:
    assert locator.has_geometry
    assert len(locator) == 6
    assert locator.units == {LONG_XUYEN, CHAU_DOC, MY_THOI, PHU_QUOC, BINH_DUC, VINH_TE}


def test_inside_a_boundary(locator: UnitLocator, queues: QueueMap) -> None:
    assert locator.locate(10.38, 105.42) == LONG_XUYEN
    assert locator.locate(10.71, 105.11) == CHAU_DOC
    assert route(locator, queues, 10.38, 105.42).key == "long-xuyen"  # type: ignore[union-attr]
    assert route(locator, queues, 10.71, 105.11).key == "chau-doc"  # type: ignore[union-attr]


def test_on_the_edge_of_a_boundary_counts_as_inside(locator: UnitLocator) -> None:
    assert locator.locate(10.38, 105.40) == LONG_XUYEN
    assert locator.locate(10.41, 105.40) == LONG_XUYEN  # a corner


def test_overlapping_boundaries_pick_the_smallest(locator: UnitLocator) -> None:
    # The Mỹ Thới square (code given as ``ma_xa``) overlaps the larger Long Xuyên square.
    assert locator.locate(10.36, 105.45) == MY_THOI
    assert locator.locate(10.34, 105.47) == MY_THOI  # Mỹ Thới only
    assert locator.locate(10.39, 105.45) == LONG_XUYEN  # Long Xuyên only


def test_inside_either_part_of_a_multipolygon(locator: UnitLocator, queues: QueueMap) -> None:
    assert locator.locate(10.20, 103.95) == PHU_QUOC  # the big island
    assert locator.locate(9.97, 104.07) == PHU_QUOC  # the small island
    assert locator.locate(10.05, 104.02) is None  # the sea between them
    # Phú Quốc has no queue of its own: the duty queue takes it.
    assert route(locator, queues, 9.97, 104.07) == queues.duty


def test_near_a_centre_with_its_own_radius(locator: UnitLocator, queues: QueueMap) -> None:
    # Bình Đức: centre (10.45, 105.50), radius_km 2.0. Move north along the meridian.
    inside = 10.45 + 0.0170
    outside = 10.45 + 0.0185
    assert haversine_km(10.45, 105.50, inside, 105.50) == pytest.approx(1.89, abs=0.01)
    assert haversine_km(10.45, 105.50, outside, 105.50) == pytest.approx(2.06, abs=0.01)
    assert locator.locate(10.45, 105.50) == BINH_DUC
    assert locator.locate(inside, 105.50) == BINH_DUC
    assert locator.locate(outside, 105.50) is None
    assert route(locator, queues, inside, 105.50).key == "long-xuyen"  # type: ignore[union-attr]
    assert route(locator, queues, outside, 105.50) == queues.duty


def test_near_a_centre_with_the_default_radius(locator: UnitLocator, queues: QueueMap) -> None:
    # Vĩnh Tế: centre (10.62, 105.05), numeric code under the alias ``ma``, default 5 km.
    east_in, east_out = 105.05 + 0.044, 105.05 + 0.048
    assert (
        haversine_km(10.62, 105.05, 10.62, east_in)
        < 5.0
        < haversine_km(10.62, 105.05, 10.62, east_out)
    )
    assert locator.locate(10.62, east_in) == VINH_TE
    assert locator.locate(10.62, east_out) is None
    queue = route(locator, queues, 10.62, east_in)
    assert queue is not None
    assert (queue.key, queue.chat_id, queue.thread_id) == ("vinh-te", FORUM_CHAT, 14)


def test_radius_is_measured_in_km_not_degrees() -> None:
    # At 60°N a degree of longitude is ~55.6 km: 0.08° east is ~4.4 km, 0.1° north ~11 km.
    loc = UnitLocator(centres=[Centre(code="x", latitude=60.0, longitude=10.0, radius_km=5.0)])
    assert loc.locate(60.0, 10.08) == "x"
    assert loc.locate(60.04, 10.0) == "x"
    assert loc.locate(60.05, 10.0) is None


def test_the_nearest_claiming_centre_wins() -> None:
    loc = UnitLocator(
        centres=[
            Centre(code="a", latitude=10.0, longitude=105.0, radius_km=20.0),
            Centre(code="b", latitude=10.0, longitude=105.1, radius_km=1.0),
            Centre(code="c", latitude=10.0, longitude=105.2, radius_km=20.0),
        ]
    )
    assert loc.locate(10.0, 105.095) == "b"  # within a and b (c is 11.5 km): b is nearest
    assert loc.locate(10.0, 105.08) == "a"  # b is nearest but 2.2 km > its radius of 1 km
    assert loc.locate(10.0, 105.12) == "c"
    assert loc.locate(10.0, 104.7) is None


def test_a_boundary_wins_over_a_nearer_centre() -> None:
    square = shapely.box(105.0, 10.0, 105.1, 10.1)
    loc = UnitLocator(
        {"poly": square}, [Centre(code="pt", latitude=10.05, longitude=105.05, radius_km=50)]
    )
    assert loc.locate(10.05, 105.05) == "poly"
    assert loc.locate(10.15, 105.05) == "pt"


def test_outside_everything_goes_to_duty(locator: UnitLocator, queues: QueueMap) -> None:
    for lat, lon in [(10.55, 105.30), (21.03, 105.85), (-33.9, 151.2)]:
        assert locator.locate(lat, lon) is None
        queue = route(locator, queues, lat, lon)
        assert queue is not None
        assert queue.is_duty
        assert (queue.key, queue.chat_id, queue.thread_id) == (DUTY_KEY, DUTY_CHAT, None)


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (math.nan, 105.42),
        (10.38, math.nan),
        (math.inf, 105.42),
        (10.38, -math.inf),
        (91.0, 105.42),
        (-90.5, 105.42),
        (10.38, 180.5),
        (10.38, -181.0),
        (105.42, 10.38),  # swapped
    ],
)
def test_invalid_coordinates_locate_nothing(locator: UnitLocator, lat: float, lon: float) -> None:
    assert locator.locate(lat, lon) is None


def test_no_geometry_at_all(queues: QueueMap) -> None:
    empty = UnitLocator.empty()
    assert not empty.has_geometry
    assert len(empty) == 0
    assert empty.locate(10.38, 105.42) is None
    assert queues.resolve(empty.locate(10.38, 105.42)) == queues.duty
    # Without geometry the citizen chooses the unit by name, and that choice routes.
    assert queues.resolve(LONG_XUYEN).key == "long-xuyen"  # type: ignore[union-attr]


def test_an_empty_feature_collection(tmp_path: Path) -> None:
    path = tmp_path / "empty.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}', encoding="utf-8")
    loc = UnitLocator.from_geojson(path, known_units=KNOWN, default_radius_km=5.0)
    assert not loc.has_geometry
    assert loc.locate(10.38, 105.42) is None


def test_locate_over_102_detailed_boundaries() -> None:
    """The shape bench/lookup.py times: one 256-vertex circle (~3 km) per real unit on a grid
    over the province; a point inside a circle finds its unit, one between circles none."""
    boundaries = {}
    for i, unit in enumerate(CATALOGUE.units):
        lat, lon = 9.6 + (i // 10) * 0.08, 104.4 + (i % 10) * 0.12
        boundaries[unit.code] = shapely.Point(lon, lat).buffer(0.03, quad_segs=64)
    assert len(boundaries) == 102
    loc = UnitLocator(boundaries)
    for i, unit in enumerate(CATALOGUE.units):
        lat, lon = 9.6 + (i // 10) * 0.08, 104.4 + (i % 10) * 0.12
        assert loc.locate(lat + 0.01, lon) == unit.code
    assert loc.locate(9.6 + 0.04, 104.4 + 0.06) is None  # between four circles
    probes = [(9.6 + (i % 97) * 0.0085, 104.4 + (i % 89) * 0.0135) for i in range(200)]
    hits = sum(loc.locate(lat, lon) is not None for lat, lon in probes)
    assert 0 < hits < 200


# --------------------------------------------------------------------------- geometry file errors


def write_geojson(tmp_path: Path, features: list[Any]) -> Path:
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), "utf-8")
    return path


def square_feature(props: dict[str, Any], x: float = 105.0, y: float = 10.0) -> dict[str, Any]:
    ring = [[x, y], [x + 0.1, y], [x + 0.1, y + 0.1], [x, y + 0.1], [x, y]]
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


def point_feature(props: dict[str, Any], coords: Any = (105.0, 10.0)) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": "Point", "coordinates": list(coords)},
    }


GOOD = square_feature({"code": LONG_XUYEN})

BAD_GEOMETRY = {
    "unknown code": ([GOOD, square_feature({"code": "99999"})], "features[1]", "unknown unit"),
    "no code": ([GOOD, square_feature({"name": "x"})], "features[1]", "no unit code"),
    "no properties": (
        [{"type": "Feature", "properties": None, "geometry": GOOD["geometry"]}],
        "features[0]",
        "no properties",
    ),
    "not a feature": ([GOOD, {"type": "Polygon"}], "features[1]", "not a GeoJSON Feature"),
    "no geometry": (
        [{"type": "Feature", "properties": {"code": LONG_XUYEN}, "geometry": None}],
        "features[0]",
        "no geometry",
    ),
    "line string": (
        [
            {
                "type": "Feature",
                "properties": {"code": LONG_XUYEN},
                "geometry": {"type": "LineString", "coordinates": [[105, 10], [105.1, 10.1]]},
            }
        ],
        "features[0]",
        "unsupported geometry type 'LineString'",
    ),
    "malformed polygon": (
        [
            {
                "type": "Feature",
                "properties": {"code": LONG_XUYEN},
                "geometry": {"type": "Polygon", "coordinates": [[[105, 10], [105.1]]]},
            }
        ],
        "features[0]",
        "malformed Polygon",
    ),
    "swapped polygon": (
        [GOOD, square_feature({"code": CHAU_DOC}, x=10.0, y=105.0)],
        "features[1]",
        "swapped",
    ),
    "swapped point": (
        [point_feature({"code": BINH_DUC}, (10.4, 105.5))],
        "features[0]",
        "swapped",
    ),
    "point without coordinates": (
        [point_feature({"code": BINH_DUC}, ())],
        "features[0]",
        "[longitude, latitude]",
    ),
    "zero radius": ([point_feature({"code": BINH_DUC, "radius_km": 0})], "features[0]", "radius"),
    "text radius": (
        [point_feature({"code": BINH_DUC, "radius_km": "2"})],
        "features[0]",
        "radius",
    ),
    "second centre": (
        [point_feature({"code": BINH_DUC}), point_feature({"code": BINH_DUC}, (105.2, 10.2))],
        "features[1]",
        "already has a centre",
    ),
    "degenerate polygon": (
        [
            {
                "type": "Feature",
                "properties": {"code": LONG_XUYEN},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[105, 10], [105.1, 10.1], [105.2, 10.2], [105, 10]]],
                },
            }
        ],
        "features[0]",
        "no area",
    ),
    "unrepairable polygon": (
        [
            {
                "type": "Feature",
                "properties": {"code": LONG_XUYEN},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[105, 10], [106, 10], [106, 10], [105, 10]]],
                },
            }
        ],
        "features[0]",
        "cannot be repaired",
    ),
}


@pytest.mark.parametrize("case", list(BAD_GEOMETRY))
def test_bad_geometry_file(tmp_path: Path, case: str) -> None:
    features, where, message = BAD_GEOMETRY[case]
    path = write_geojson(tmp_path, features)
    with pytest.raises(ValueError, match="Geometry file") as info:
        UnitLocator.from_geojson(path, known_units=KNOWN, default_radius_km=5.0)
    text = str(info.value)
    assert str(path) in text
    assert where in text
    assert message in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": "Feature", "features": []}', "FeatureCollection"),
        ('{"type": "FeatureCollection", "features": {}}', "'features' must be a list"),
        ("[]", "FeatureCollection"),
    ],
)
def test_bad_geometry_file_shape(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        UnitLocator.from_geojson(path, known_units=KNOWN, default_radius_km=5.0)
    assert str(path) in str(info.value)


def test_missing_geometry_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.geojson"
    with pytest.raises(ValueError, match="file not found") as info:
        UnitLocator.from_geojson(path, known_units=KNOWN, default_radius_km=5.0)
    assert str(path) in str(info.value)


def test_bad_default_radius() -> None:
    with pytest.raises(ValueError, match="radius"):
        UnitLocator.from_geojson(GEOMETRY, known_units=KNOWN, default_radius_km=0)


def test_invalid_polygon_is_repaired(tmp_path: Path) -> None:
    # A bow-tie (self-intersecting ring) becomes two triangles meeting at (105.05, 10.05).
    bowtie = [[105.0, 10.0], [105.1, 10.1], [105.1, 10.0], [105.0, 10.1], [105.0, 10.0]]
    feature = {
        "type": "Feature",
        "properties": {"code": LONG_XUYEN},
        "geometry": {"type": "Polygon", "coordinates": [bowtie]},
    }
    loc = UnitLocator.from_geojson(
        write_geojson(tmp_path, [feature]), known_units=KNOWN, default_radius_km=5.0
    )
    assert loc.locate(10.05, 105.02) == LONG_XUYEN  # left triangle
    assert loc.locate(10.05, 105.08) == LONG_XUYEN  # right triangle
    assert loc.locate(10.09, 105.05) is None  # top notch, outside both triangles


def test_boundaries_with_the_same_code_are_merged(tmp_path: Path) -> None:
    features = [
        square_feature({"code": LONG_XUYEN}),
        square_feature({"code": LONG_XUYEN}, x=106.0),
        point_feature({"code": LONG_XUYEN}, (107.0, 10.05)),
    ]
    loc = UnitLocator.from_geojson(
        write_geojson(tmp_path, features), known_units=KNOWN, default_radius_km=1.0
    )
    assert len(loc) == 1
    assert loc.locate(10.05, 105.05) == LONG_XUYEN
    assert loc.locate(10.05, 106.05) == LONG_XUYEN
    assert loc.locate(10.05, 107.0) == LONG_XUYEN
    assert loc.locate(10.05, 105.5) is None


# --------------------------------------------------------------------------- queues


def test_queue_file(queues: QueueMap) -> None:
    assert [q.key for q in queues.queues] == ["long-xuyen", "chau-doc", "vinh-te"]
    lx = queues.by_key("long-xuyen")
    assert lx is not None
    assert lx.name == "Cụm Long Xuyên"
    assert lx.units == {LONG_XUYEN, BINH_DUC, MY_THOI}
    assert lx.chat_key == str(LX_CHAT)
    assert not lx.is_duty
    cd = queues.by_key("chau-doc")
    assert cd is not None
    assert cd.chat_key == f"{FORUM_CHAT}/12"
    assert queues.duty is not None
    assert queues.duty.is_duty
    assert queues.duty.units == frozenset()
    assert queues.by_key(DUTY_KEY) is queues.duty
    assert queues.by_key("nope") is None
    assert queues.unit_queue_count == 3


def test_a_chosen_unit_with_and_without_its_own_queue(queues: QueueMap) -> None:
    # A cluster queue serves several units.
    for code in (LONG_XUYEN, BINH_DUC, MY_THOI):
        assert queues.for_unit(code) is queues.by_key("long-xuyen")
        assert queues.resolve(code) is queues.by_key("long-xuyen")
    assert queues.resolve(CHAU_DOC) is queues.by_key("chau-doc")
    # No queue of its own: for_unit says so, resolve falls through to duty.
    assert queues.for_unit(PHU_QUOC) is None
    assert queues.resolve(PHU_QUOC) is queues.duty
    # No unit at all (nothing chosen, nothing located).
    assert queues.for_unit(None) is None
    assert queues.resolve(None) is queues.duty


def test_units_without_queue(queues: QueueMap) -> None:
    codes = [unit.code for unit in CATALOGUE.units]
    missing = queues.units_without_queue(codes)
    assert len(missing) == 102 - 5
    assert PHU_QUOC in missing
    assert LONG_XUYEN not in missing
    assert missing == [c for c in codes if c in missing]  # order kept


def test_no_duty_configured() -> None:
    queues = load_queue_map(QUEUES, duty_chat_id=None, duty_thread_id=None, known_units=KNOWN)
    assert queues.duty is None
    assert queues.resolve(PHU_QUOC) is None
    assert queues.resolve(None) is None
    assert queues.resolve(LONG_XUYEN) is queues.by_key("long-xuyen")
    assert queues.by_key(DUTY_KEY) is None


def test_no_queue_file_sends_everything_to_duty() -> None:
    queues = load_queue_map(None, duty_chat_id=DUTY_CHAT, duty_thread_id=7, known_units=KNOWN)
    assert queues.queues == ()
    assert queues.duty == duty_queue(DUTY_CHAT, 7)
    assert queues.duty is not None
    assert queues.duty.chat_key == f"{DUTY_CHAT}/7"
    for unit in CATALOGUE.units:
        assert queues.resolve(unit.code) is queues.duty
    assert len(queues.units_without_queue(KNOWN)) == 102
    nothing = load_queue_map(None, duty_chat_id=None, duty_thread_id=None, known_units=KNOWN)
    assert nothing.resolve(LONG_XUYEN) is None
    assert nothing.all_queues == ()


def test_bad_duty_settings() -> None:
    with pytest.raises(ValueError, match="TINBAO_DUTY_CHAT_ID"):
        load_queue_map(None, duty_chat_id=None, duty_thread_id=5, known_units=KNOWN)
    with pytest.raises(ValueError, match="TINBAO_DUTY_THREAD_ID"):
        load_queue_map(None, duty_chat_id=DUTY_CHAT, duty_thread_id=0, known_units=KNOWN)


def test_by_chat_with_forum_topics(queues: QueueMap) -> None:
    # A forum group holding two topic queues picks the right one...
    assert queues.by_chat(FORUM_CHAT, 12) is queues.by_key("chau-doc")
    assert queues.by_chat(FORUM_CHAT, 14) is queues.by_key("vinh-te")
    # ...and another topic, or the General topic, is no queue.
    assert queues.by_chat(FORUM_CHAT, 99) is None
    assert queues.by_chat(FORUM_CHAT, None) is None
    # A group with a single whole-group queue matches with or without a thread id (a reply
    # thread in a plain supergroup also carries message_thread_id).
    assert queues.by_chat(LX_CHAT, None) is queues.by_key("long-xuyen")
    assert queues.by_chat(LX_CHAT, 4321) is queues.by_key("long-xuyen")
    assert queues.by_chat(DUTY_CHAT, None) is queues.duty
    assert queues.by_chat(-1009999999999, None) is None


def test_by_chat_with_a_whole_group_queue_and_a_topic_queue() -> None:
    whole = Queue("whole", "Whole", -100500, None, frozenset({LONG_XUYEN}))
    topic = Queue("topic", "Topic", -100500, 3, frozenset({CHAU_DOC}))
    duty = duty_queue(-100500, 9)
    queues = QueueMap(queues=(whole, topic), duty=duty)
    assert queues.by_chat(-100500, 3) is topic
    assert queues.by_chat(-100500, 9) is duty
    assert queues.by_chat(-100500, None) is whole
    assert queues.by_chat(-100500, 77) is whole


def test_queue_map_constructor_refuses_inconsistencies() -> None:
    a = Queue("a", "A", -1001, None, frozenset({LONG_XUYEN}))
    with pytest.raises(ValueError, match="two queues"):
        QueueMap(queues=(a, Queue("b", "B", -1002, None, frozenset({LONG_XUYEN}))))
    with pytest.raises(ValueError, match="used twice"):
        QueueMap(queues=(a, Queue("a", "B", -1002, None, frozenset({CHAU_DOC}))))
    with pytest.raises(ValueError, match="share chat"):
        QueueMap(queues=(a, Queue("b", "B", -1001, None, frozenset({CHAU_DOC}))))


def test_example_queue_file_is_valid() -> None:
    queues = load_queue_map(
        EXAMPLE_QUEUES_PATH, duty_chat_id=DUTY_CHAT, duty_thread_id=None, known_units=KNOWN
    )
    assert queues.unit_queue_count >= 2
    assert queues.resolve(LONG_XUYEN) is queues.by_key("long-xuyen")
    forum = [q for q in queues.queues if q.thread_id is not None]
    assert len({q.chat_id for q in forum}) < len(forum)  # two topics share one group


# --------------------------------------------------------------------------- queue file errors

HEAD = f"""
[[queue]]
key = "long-xuyen"
chat_id = {LX_CHAT}
units = ["{LONG_XUYEN}"]
"""

BAD_QUEUES = {
    "unknown unit": ('key = "b"\nchat_id = -1002\nunits = ["99999"]', "unknown unit code"),
    "unit in two queues": (
        f'key = "b"\nchat_id = -1002\nunits = ["{CHAU_DOC}", "{LONG_XUYEN}"]',
        "already in queue[0]",
    ),
    "unit listed twice": (
        f'key = "b"\nchat_id = -1002\nunits = ["{CHAU_DOC}", "{CHAU_DOC}"]',
        "listed twice",
    ),
    "duplicate key": (
        f'key = "long-xuyen"\nchat_id = -1002\nunits = ["{CHAU_DOC}"]',
        "already used by queue[0]",
    ),
    "duplicate chat": (
        f'key = "b"\nchat_id = {LX_CHAT}\nunits = ["{CHAU_DOC}"]',
        "already used by queue[0]",
    ),
    "quoted chat id": (
        f'key = "b"\nchat_id = "-1002"\nunits = ["{CHAU_DOC}"]',
        "chat_id must be an integer",
    ),
    "float chat id": (
        f'key = "b"\nchat_id = -1002.0\nunits = ["{CHAU_DOC}"]',
        "chat_id must be an integer",
    ),
    "positive chat id": (
        f'key = "b"\nchat_id = 12345\nunits = ["{CHAU_DOC}"]',
        "chat_id must be a group id",
    ),
    "bad thread id": (
        f'key = "b"\nchat_id = -1002\nthread_id = 0\nunits = ["{CHAU_DOC}"]',
        "thread_id must be a positive integer",
    ),
    "upper-case key": (f'key = "Chau-Doc"\nchat_id = -1002\nunits = ["{CHAU_DOC}"]', "key must"),
    "key with a space": (f'key = "chau doc"\nchat_id = -1002\nunits = ["{CHAU_DOC}"]', "key must"),
    "key ending in a hyphen": (
        f'key = "chau-"\nchat_id = -1002\nunits = ["{CHAU_DOC}"]',
        "key must",
    ),
    "long key": (f'key = "{"a" * 33}"\nchat_id = -1002\nunits = ["{CHAU_DOC}"]', "key must"),
    "reserved key": (f'key = "duty"\nchat_id = -1002\nunits = ["{CHAU_DOC}"]', "reserved"),
    "no units": ('key = "b"\nchat_id = -1002\nunits = []', "units is empty"),
    "units missing": ('key = "b"\nchat_id = -1002', "missing key 'units'"),
    "numeric unit": ('key = "b"\nchat_id = -1002\nunits = [30316]', "quoted strings"),
    "typo in a key": (
        f'key = "b"\nchat_id = -1002\nthread = 3\nunits = ["{CHAU_DOC}"]',
        "unknown key(s) 'thread'",
    ),
    "duty chat reused": (
        f'key = "b"\nchat_id = {DUTY_CHAT}\nunits = ["{CHAU_DOC}"]',
        "is the duty queue",
    ),
}


@pytest.mark.parametrize("case", list(BAD_QUEUES))
def test_bad_queue_file(tmp_path: Path, case: str) -> None:
    body, message = BAD_QUEUES[case]
    path = tmp_path / "queues.toml"
    path.write_text(HEAD + "\n[[queue]]\n" + body + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Queue map") as info:
        load_queue_map(path, duty_chat_id=DUTY_CHAT, duty_thread_id=None, known_units=KNOWN)
    text = str(info.value)
    assert str(path) in text
    assert "queue[1]" in text  # the offending entry is named
    assert message in text


def test_duty_topic_reused_but_another_topic_in_the_duty_group_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    body = f'[[queue]]\nkey = "b"\nchat_id = {DUTY_CHAT}\nthread_id = 5\nunits = ["{CHAU_DOC}"]\n'
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match="is the duty queue"):
        load_queue_map(path, duty_chat_id=DUTY_CHAT, duty_thread_id=5, known_units=KNOWN)
    queues = load_queue_map(path, duty_chat_id=DUTY_CHAT, duty_thread_id=6, known_units=KNOWN)
    assert queues.by_chat(DUTY_CHAT, 5) is queues.by_key("b")
    assert queues.by_chat(DUTY_CHAT, 6) is queues.duty
    assert queues.by_chat(DUTY_CHAT, None) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[queue]\nkey=", "not valid TOML"),
        ('[queue]\nkey = "a"', "array of tables"),
        ('[[queues]]\nkey = "a"', "unknown top-level key"),
        ("queue = [1]", "must be a table"),
    ],
)
def test_bad_queue_file_shape(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "queues.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_queue_map(path, duty_chat_id=None, duty_thread_id=None, known_units=KNOWN)
    assert str(path) in str(info.value)


def test_missing_queue_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ValueError, match="file not found"):
        load_queue_map(path, duty_chat_id=DUTY_CHAT, duty_thread_id=None, known_units=KNOWN)


def test_an_empty_queue_file_means_no_unit_queues(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    queues = load_queue_map(path, duty_chat_id=DUTY_CHAT, duty_thread_id=None, known_units=KNOWN)
    assert queues.queues == ()
    assert queues.resolve(LONG_XUYEN) is queues.duty
