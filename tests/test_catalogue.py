"""The unit catalogue: generated from vietnam-provinces, committed as data, validated on load."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from config.catalogue import (
    DEFAULT_CATALOGUE_PATH,
    Catalogue,
    UnitEntry,
    dump_catalogue,
    load_catalogue,
    main,
)


def _minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "province": {"code": 91, "name": "An Giang", "division_type": "tỉnh"},
        "source": {"package": "vietnam-provinces", "version": "x", "data_version": "y"},
        "units": [
            {
                "code": "30307",
                "name": "Phường Long Xuyên",
                "division_type": "phường",
                "codename": "phuong_long_xuyen",
            },
            {
                "code": "30337",
                "name": "Xã An Phú",
                "division_type": "xã",
                "codename": "xa_an_phu",
            },
        ],
    }
    data.update(overrides)
    return data


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "units.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- committed file


def test_default_path_points_at_committed_file() -> None:
    assert DEFAULT_CATALOGUE_PATH.name == "units_91.json"
    assert DEFAULT_CATALOGUE_PATH.parent.name == "data"
    assert DEFAULT_CATALOGUE_PATH.is_file()


def test_committed_catalogue_has_102_units_of_the_right_kinds() -> None:
    catalogue = load_catalogue()
    assert isinstance(catalogue, Catalogue)
    assert catalogue.province_code == 91
    assert catalogue.province_name == "An Giang"
    assert len(catalogue.units) == 102
    assert len(catalogue) == 102
    counts = Counter(unit.division_type for unit in catalogue.units)
    assert counts == {"xã": 85, "phường": 14, "đặc khu": 3}


def test_committed_catalogue_is_sorted_and_indexed_by_code() -> None:
    catalogue = load_catalogue()
    codes = [unit.code for unit in catalogue.units]
    assert codes == sorted(codes, key=int)
    assert len(set(codes)) == len(codes)
    assert set(catalogue.by_code) == set(codes)
    assert catalogue.by_code["30307"] == UnitEntry(
        code="30307",
        name="Phường Long Xuyên",
        division_type="phường",
        codename="phuong_long_xuyen",
    )
    assert catalogue.by_code["30316"].name == "Phường Châu Đốc"
    assert catalogue.by_code["31078"].name == "Đặc khu Phú Quốc"


def test_catalogue_is_immutable() -> None:
    catalogue = load_catalogue()
    with pytest.raises(AttributeError):
        catalogue.province_code = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        catalogue.by_code["x"] = catalogue.units[0]  # type: ignore[index]


def test_committed_file_is_utf8_with_trailing_newline() -> None:
    raw = DEFAULT_CATALOGUE_PATH.read_bytes()
    assert raw.endswith(b"}\n")
    assert "Phường Long Xuyên".encode() in raw  # not \u-escaped


# --------------------------------------------------------------------------- generation


def test_generated_catalogue_equals_committed_file() -> None:
    pytest.importorskip("vietnam_provinces")
    from config.catalogue import generate_catalogue

    generated = generate_catalogue(91)
    committed_text = DEFAULT_CATALOGUE_PATH.read_text(encoding="utf-8")
    assert json.loads(committed_text) == generated
    # Byte for byte: the committed file is exactly what `write_catalogue` produces.
    assert committed_text == dump_catalogue(generated)


def test_generated_catalogue_shape() -> None:
    pytest.importorskip("vietnam_provinces")
    import vietnam_provinces

    from config.catalogue import generate_catalogue

    data = generate_catalogue(91)
    assert data["province"] == {"code": 91, "name": "An Giang", "division_type": "tỉnh"}
    assert data["source"] == {
        "package": "vietnam-provinces",
        "version": vietnam_provinces.__version__,
        "data_version": vietnam_provinces.__data_version__,
    }
    assert data["units"][2] == {
        "code": "30307",
        "name": "Phường Long Xuyên",
        "division_type": "phường",
        "codename": "phuong_long_xuyen",
    }
    json.dumps(data)  # JSON-able


def test_generate_rejects_unknown_province() -> None:
    pytest.importorskip("vietnam_provinces")
    from config.catalogue import generate_catalogue

    with pytest.raises(ValueError, match="999"):
        generate_catalogue(999)


def test_write_catalogue_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("vietnam_provinces")
    from config.catalogue import write_catalogue

    out = tmp_path / "nested" / "units_91.json"
    assert write_catalogue(91, out) == 102
    assert out.read_bytes() == DEFAULT_CATALOGUE_PATH.read_bytes()
    assert load_catalogue(out) == load_catalogue()


def test_main_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("vietnam_provinces")
    out = tmp_path / "units.json"
    assert main(["--province", "91", "--out", str(out)]) == 0
    assert "102" in capsys.readouterr().out
    assert main(["--province", "91", "--out", str(out), "--check"]) == 0
    out.write_text("{}\n", encoding="utf-8")
    assert main(["--province", "91", "--out", str(out), "--check"]) == 1


def test_main_reports_unknown_province(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("vietnam_provinces")
    out = tmp_path / "units.json"
    assert main(["--province", "999", "--out", str(out)]) == 2
    assert "999" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- validation


def test_load_minimal_file(tmp_path: Path) -> None:
    catalogue = load_catalogue(_write(tmp_path, _minimal()))
    assert catalogue.province_code == 91
    assert [unit.code for unit in catalogue.units] == ["30307", "30337"]
    assert catalogue.by_code["30337"].name == "Xã An Phú"


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_catalogue(tmp_path / "absent.json")


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "units.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"units\.json.*not valid JSON"):
        load_catalogue(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "top level must be a JSON object"),
        ({"units": []}, "missing key 'province'"),
        ({"province": {"code": 91, "name": "An Giang"}}, "missing key 'units'"),
        (_minimal(province={"name": "An Giang"}), r"missing key 'province\.code'"),
        (_minimal(province={"code": "91", "name": "An Giang"}), "must be an integer"),
        (_minimal(units={}), "'units' must be a list"),
        (_minimal(units=[]), "'units' is empty"),
        (_minimal(units=["30307"]), r"units\[0\] must be an object"),
    ],
)
def test_malformed_files_are_rejected(tmp_path: Path, data: Any, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as excinfo:
        load_catalogue(path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("key", ["code", "name", "division_type", "codename"])
def test_unit_missing_key_is_rejected(tmp_path: Path, key: str) -> None:
    data = _minimal()
    del data["units"][1][key]
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=rf"units\[1\] is missing key '{key}'") as excinfo:
        load_catalogue(path)
    assert str(path) in str(excinfo.value)


def test_unit_with_empty_or_non_string_value_is_rejected(tmp_path: Path) -> None:
    data = _minimal()
    data["units"][0]["code"] = 30307
    with pytest.raises(ValueError, match=r"units\[0\]\.code must be a non-empty string"):
        load_catalogue(_write(tmp_path, data))
    data["units"][0]["code"] = "30307"
    data["units"][0]["name"] = "  "
    with pytest.raises(ValueError, match=r"units\[0\]\.name must be a non-empty string"):
        load_catalogue(_write(tmp_path, data))


def test_duplicate_codes_are_rejected(tmp_path: Path) -> None:
    data = _minimal()
    data["units"][1]["code"] = "30307"
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match="duplicate unit code '30307'") as excinfo:
        load_catalogue(path)
    assert str(path) in str(excinfo.value)
