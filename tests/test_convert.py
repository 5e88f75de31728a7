"""``perception convert`` as a user runs it: output folder safety, class maps, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_convert_lanes import _write_bdd, _write_tusimple

from perception.cli import main
from perception.data.check import check_dataset
from perception.data.formats import v1
from perception.data.formats.convert import IN_PROGRESS, ClassMap, prepare_output
from perception.errors import PerceptionError


def test_convert_cli_writes_a_checked_dataset_and_reports_counts(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "bdd", tmp_path / "out"
    _write_bdd(src)
    assert main(["convert", "--format", "bdd100k", "--src", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 samples; labeled per task: det 2, lane 2, drivable 2, depth 0" in printed
    assert "not in the class map" in printed and "unicorn 1" in printed
    assert check_dataset(out)[0] == [] and not (out / IN_PROGRESS).exists()

    # a second run never replaces the first without --overwrite
    again = ["convert", "--format", "bdd100k", "--src", str(src), "--out", str(out)]
    assert main(again) == 2
    assert "not empty; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite", "--limit", "2"]) == 0
    assert len(v1.read_manifest(out)) == 2


def test_overwrite_clears_only_our_own_folders(tmp_path: Path) -> None:
    someone = tmp_path / "photos"
    someone.mkdir()
    (someone / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(PerceptionError, match="not a perception dataset; refusing"):
        prepare_output(someone, overwrite=True)
    assert (someone / "holiday.jpg").read_bytes() == b"precious"


def test_a_failed_conversion_is_not_a_dataset_and_can_be_redone(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "tusimple", tmp_path / "out"
    _write_tusimple(src, second_line='{"lanes": [], "raw_file": "clips/x/20.jpg"}\n')
    args = ["convert", "--format", "tusimple", "--src", str(src), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "label_data_0313.json:2: missing key 'h_samples'" in err
    problems, _ = check_dataset(out)
    assert any("manifest.jsonl" in str(p) for p in problems)  # refused as incomplete
    _write_tusimple(src)  # the user fixes the source and runs again over the debris
    assert main([*args, "--overwrite"]) == 0
    assert check_dataset(out)[0] == []


def test_class_map_yaml_renames_drops_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    mapping = {"car": "vehicle", "truck": "vehicle", "pedestrian": "person", "traffic light": None}
    path.write_text(yaml.safe_dump({"classes": ["vehicle", "person"], "map": mapping}))
    cmap = ClassMap.load(path, default={})
    assert cmap.classes == ["vehicle", "person"]
    assert [cmap(c) for c in ("car", "truck", "pedestrian", "traffic light", "tram")] == [
        "vehicle", "vehicle", "person", None, None,
    ]  # fmt: skip
    assert cmap.dropped == {"traffic light": 1} and cmap.unknown == {"tram": 1}

    src, out = tmp_path / "bdd", tmp_path / "out"
    _write_bdd(src)
    assert main(["convert", "--format", "bdd100k", "--src", str(src), "--out", str(out),
                 "--classes", str(path)]) == 0  # fmt: skip
    assert yaml.safe_load((out / "dataset.yaml").read_text())["classes"] == ["vehicle", "person"]
    labels = {lb for r in v1.read_manifest(out) for lb in r.labels or []}
    assert labels <= {"vehicle", "person"} and labels

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"classes": ["car"], "map": {"bus": "coach"}}))
    with pytest.raises(PerceptionError, match=r"\['coach'\] are not in the class list"):
        ClassMap.load(bad, default={})
    bad.write_text(json.dumps({"map": {"bus": 3}}))
    with pytest.raises(PerceptionError, match="map each dataset category to a class or null"):
        ClassMap.load(bad, default={})


def test_unknown_format_and_missing_source_are_one_line_errors(tmp_path: Path, capsys) -> None:
    missing = ["convert", "--format", "kitti", "--src", str(tmp_path / "nope"), "--out", "o"]
    assert main(missing) == 2
    assert "no such source directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "--format", "nuscenes", "--src", ".", "--out", "o"])
