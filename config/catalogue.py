"""The catalogue of commune-level units that receive reports.

The catalogue is data, not code: ``config/data/units_91.json`` is generated from the
``vietnam-provinces`` package (an optional dependency, only needed to regenerate) and the
bot reads that file at start-up.  A future reorganisation is a new data file, not a release.

Regenerate with::

    python -m config.catalogue --province 91 --out config/data/units_91.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_PROVINCE_CODE = 91
DEFAULT_CATALOGUE_PATH = DATA_DIR / "units_91.json"

_UNIT_KEYS = ("code", "name", "division_type", "codename")


@dataclass(frozen=True, slots=True)
class UnitEntry:
    """One commune-level unit (xã, phường or đặc khu)."""

    code: str
    name: str
    division_type: str
    codename: str


@dataclass(frozen=True, slots=True)
class Catalogue:
    """All units of one province, sorted by code; ``by_code`` is a read-only index."""

    province_code: int
    province_name: str
    units: tuple[UnitEntry, ...]
    by_code: Mapping[str, UnitEntry]

    def __len__(self) -> int:
        return len(self.units)


def default_catalogue_path(province_code: int) -> Path:
    return DATA_DIR / f"units_{province_code}.json"


# --------------------------------------------------------------------------- generation


def generate_catalogue(province_code: int) -> dict[str, Any]:
    """Build the JSON-able catalogue of ``province_code`` from ``vietnam-provinces``.

    Raises ``ImportError`` if the package is not installed and ``ValueError`` for an
    unknown province code.
    """
    import vietnam_provinces
    from vietnam_provinces import Province, ProvinceCode, Ward

    try:
        code = ProvinceCode(province_code)
    except ValueError:
        raise ValueError(f"Province code {province_code} is invalid") from None
    province = Province.from_code(code)
    units = [
        {
            "code": str(int(ward.code)),
            "name": ward.name,
            "division_type": _enum_value(ward.division_type),
            "codename": ward.codename,
        }
        for ward in Ward.iter_by_province(code)
    ]
    units.sort(key=lambda unit: int(unit["code"]))
    return {
        "province": {
            "code": int(province.code),
            "name": province.name,
            "division_type": _enum_value(province.division_type),
        },
        "source": {
            "package": "vietnam-provinces",
            "version": str(vietnam_provinces.__version__),
            "data_version": str(vietnam_provinces.__data_version__),
        },
        "units": units,
    }


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def dump_catalogue(data: Mapping[str, Any]) -> str:
    """The exact text written to disk: UTF-8 friendly, indent 2, trailing newline."""
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def write_catalogue(province_code: int, path: Path) -> int:
    """Generate the catalogue of ``province_code`` into ``path``; return the unit count."""
    data = generate_catalogue(province_code)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_catalogue(data), encoding="utf-8")
    return len(data["units"])


# --------------------------------------------------------------------------- loading


def load_catalogue(path: Path | None = None) -> Catalogue:
    """Read and validate a catalogue file (default ``config/data/units_91.json``).

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` (naming the
    file) if it is not valid JSON or does not have the expected shape.
    """
    path = DEFAULT_CATALOGUE_PATH if path is None else Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Unit catalogue {path}: not valid JSON ({exc})") from exc
    return _parse_catalogue(raw, path)


def _parse_catalogue(raw: Any, path: Path) -> Catalogue:
    def fail(message: str) -> ValueError:
        return ValueError(f"Unit catalogue {path}: {message}")

    if not isinstance(raw, dict):
        raise fail("top level must be a JSON object")
    for key in ("province", "units"):
        if key not in raw:
            raise fail(f"missing key {key!r}")

    province = raw["province"]
    if not isinstance(province, dict):
        raise fail("'province' must be an object")
    for key in ("code", "name"):
        if key not in province:
            raise fail(f"missing key 'province.{key}'")
    province_code = province["code"]
    if isinstance(province_code, bool) or not isinstance(province_code, int):
        raise fail(f"'province.code' must be an integer, got {province_code!r}")
    province_name = province["name"]
    if not isinstance(province_name, str) or not province_name.strip():
        raise fail("'province.name' must be a non-empty string")

    raw_units = raw["units"]
    if not isinstance(raw_units, list):
        raise fail("'units' must be a list")
    if not raw_units:
        raise fail("'units' is empty")

    units: list[UnitEntry] = []
    by_code: dict[str, UnitEntry] = {}
    for index, item in enumerate(raw_units):
        where = f"units[{index}]"
        if not isinstance(item, dict):
            raise fail(f"{where} must be an object")
        for key in _UNIT_KEYS:
            if key not in item:
                raise fail(f"{where} is missing key {key!r}")
            value = item[key]
            if not isinstance(value, str) or not value.strip():
                raise fail(f"{where}.{key} must be a non-empty string, got {value!r}")
        unit = UnitEntry(
            code=item["code"],
            name=item["name"],
            division_type=item["division_type"],
            codename=item["codename"],
        )
        if unit.code in by_code:
            raise fail(
                f"duplicate unit code {unit.code!r} "
                f"({by_code[unit.code].name!r} and {unit.name!r})"
            )
        by_code[unit.code] = unit
        units.append(unit)

    units.sort(key=lambda unit: (len(unit.code), unit.code))
    return Catalogue(
        province_code=province_code,
        province_name=province_name,
        units=tuple(units),
        by_code=MappingProxyType(by_code),
    )


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m config.catalogue",
        description="Generate the unit catalogue from the vietnam-provinces package.",
    )
    parser.add_argument(
        "--province",
        type=int,
        default=DEFAULT_PROVINCE_CODE,
        help=f"province code (default {DEFAULT_PROVINCE_CODE}, An Giang)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default config/data/units_<province>.json)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the file differs from what would be generated",
    )
    args = parser.parse_args(argv)
    out: Path = args.out if args.out is not None else default_catalogue_path(args.province)

    try:
        if args.check:
            expected = dump_catalogue(generate_catalogue(args.province))
            try:
                actual = out.read_text(encoding="utf-8")
            except FileNotFoundError:
                actual = None
            if actual != expected:
                print(f"{out} is out of date; regenerate it", file=sys.stderr)
                return 1
            print(f"{out} is up to date")
            return 0
        count = write_catalogue(args.province, out)
    except ImportError:
        print(
            "vietnam-provinces is not installed; pip install 'tinbao[catalogue]'",
            file=sys.stderr,
        )
        return 2
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"wrote {count} units to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
