"""CPU time of the two lookups a citizen's "where" step runs: the commune search
(:class:`handlers.places.PlaceIndex`, accents and typos tolerated) over the province's 102 units,
and the point-in-boundary lookup (:class:`handlers.routing.UnitLocator`) over 102 detailed
boundaries (one 256-vertex circle of ~3 km per unit, on a grid over the province).

Both run on the event loop for every typed place or shared location, so each must stay far
under a millisecond. CPU time (``time.process_time``), not wall time: the figure does not depend
much on what else the machine runs.

    python -m bench.lookup [--rounds 200]
"""

from __future__ import annotations

import argparse
import time

import shapely

from bench.report import figure
from config.catalogue import load_catalogue
from handlers.places import PlaceIndex
from handlers.routing import UnitLocator

QUERIES = ("long xuyen", "phuong long xuyn", "binh", "zzzz", "rach gia kien giang")
TARGET_US = 1000.0


def search_us(rounds: int) -> float:
    index = PlaceIndex(load_catalogue().units)
    index.search("warm up")
    start = time.process_time()
    for _ in range(rounds):
        for query in QUERIES:
            index.search(query)
    return (time.process_time() - start) / (rounds * len(QUERIES)) * 1e6


def locate_us(rounds: int) -> float:
    boundaries = {}
    for i, unit in enumerate(load_catalogue().units):
        lat, lon = 9.6 + (i // 10) * 0.08, 104.4 + (i % 10) * 0.12
        boundaries[unit.code] = shapely.Point(lon, lat).buffer(0.03, quad_segs=64)
    locator = UnitLocator(boundaries)
    probes = [(9.6 + (i % 97) * 0.0085, 104.4 + (i % 89) * 0.0135) for i in range(10 * rounds)]
    locator.locate(*probes[0])
    start = time.process_time()
    for lat, lon in probes:
        locator.locate(lat, lon)
    return (time.process_time() - start) / len(probes) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    search, locate = search_us(args.rounds), locate_us(args.rounds)
    print(f"commune search   {search:8.1f} µs CPU per query   (target {TARGET_US:.0f} µs)")
    print(f"boundary lookup  {locate:8.1f} µs CPU per point   (target {TARGET_US:.0f} µs)")
    print(figure("none", "place_search_us", search, "µs", TARGET_US, "lookup"))
    print(figure("none", "unit_locate_us", locate, "µs", TARGET_US, "lookup"))


if __name__ == "__main__":
    main()
