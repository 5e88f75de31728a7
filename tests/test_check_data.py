"""``perception check-data``: a valid dataset passes; every kind of damage is reported.

Each bad case damages sample ``000001`` (manifest line 2) of a tiny valid dataset and
checks that exactly that problem is reported, once, with the right line, id and reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import write_manifest

from perception.cli import main
from perception.data.check import Problem, check_dataset, print_report
from perception.data.formats import v1
from perception.structures import Camera

# A mutator damages the dataset at ``root`` and returns the manifest lines to write.
Mutator = Callable[[Path, list[v1.Record]], list[str]]

SID = "000001"  # the damaged sample: 64x96 image, one "car" box [8, 10, 28, 26]


def _lines(records: list[v1.Record]) -> list[str]:
    return [r.to_json() for r in records]


def _edit(**changes) -> Mutator:
    """Replace fields of sample 1's record (goes through ``Record.to_json``)."""

    def mutate(root: Path, records: list[v1.Record]) -> list[str]:
        records[1] = replace(records[1], **changes)
        return _lines(records)

    return mutate


def _raw(change: Callable[[dict], object]) -> Mutator:
    """Edit sample 1's decoded JSON object directly (for what ``Record`` cannot hold)."""

    def mutate(root: Path, records: list[v1.Record]) -> list[str]:
        lines = _lines(records)
        obj = json.loads(lines[1])
        change(obj)
        lines[1] = json.dumps(obj)
        return lines

    return mutate


def _line(text: str) -> Mutator:
    """Replace sample 1's manifest line with ``text`` verbatim."""

    def mutate(root: Path, records: list[v1.Record]) -> list[str]:
        lines = _lines(records)
        lines[1] = text
        return lines

    return mutate


def _file(relative: str, content: np.ndarray | bytes | None) -> Mutator:
    """Overwrite (array or raw bytes) or delete (``None``) one file of the dataset."""

    def mutate(root: Path, records: list[v1.Record]) -> list[str]:
        path = root / relative
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            v1.write_png(path, content)
        return _lines(records)

    return mutate


def _truncate(relative: str) -> Mutator:
    def mutate(root: Path, records: list[v1.Record]) -> list[str]:
        path = root / relative
        path.write_bytes(path.read_bytes()[:60])
        return _lines(records)

    return mutate


def _mask_with(value: int, shape: tuple[int, ...] = (64, 96), dtype=np.uint8) -> np.ndarray:
    mask = np.zeros(shape, dtype)
    mask[:10] = 1
    mask[20:22] = value
    return mask


def _apply(root: Path, mutate: Mutator) -> None:
    lines = mutate(root, v1.read_manifest(root))
    (root / v1.MANIFEST_FILE).write_text("".join(line + "\n" for line in lines))


def _cli(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-data", str(root)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _absolute_image(root: Path, records: list[v1.Record]) -> list[str]:
    """An absolute path to a file that does exist: still refused (datasets must move)."""
    records[1] = replace(records[1], image=str((root / records[1].image).resolve()))
    return _lines(records)


def _case(
    name: str, mutate: Mutator, *expected: str, line: int = 2, sid: str | None = SID
) -> object:
    """One damage case: the single problem is on ``line`` for ``sid`` and names ``expected``."""
    return pytest.param(mutate, line, sid, expected, id=name)


MASK_VALUES_7 = "lane/000001.png has values {0, 1, 7}; allowed 0, 1, 255"
MASK_VALUES_2 = "drivable/000001.png has values {0, 1, 2}; allowed 0, 1, 255"
NAN_LINE = (
    '{"id":"000001","image":"images/000001.png","width":96,"height":64,'
    '"boxes":[[NaN,10,28,26]],"labels":["car"]}'
)
CASES = [
    _case("invalid_json", _line('{"id": "000001", "image": '), "not valid JSON", sid=None),
    _case("not_an_object", _line("[1, 2, 3]"), "expected a JSON object", sid=None),
    _case("missing_key", _raw(lambda o: o.pop("image")), "missing required key 'image'"),
    _case("width_not_int", _raw(lambda o: o.update(width="96")), "'width' must be a positive"),
    _case("height_zero", _raw(lambda o: o.update(height=0)), "'height' must be a positive"),
    _case("labels_count", _raw(lambda o: o.update(labels=["car"] * 2)), "1 boxes but 2 labels"),
    _case(
        "duplicate_id", _raw(lambda o: o.update(id="000002")),
        "duplicate id '000002'", "first used on line 2", line=3, sid="000002",
    ),
    _case("absolute_path", _absolute_image, "'image' path", "absolute path"),
    _case("escaping_path", _edit(lane="../outside.png"), "'lane' path", "escapes"),
    _case("missing_file", _file("depth/000001.png", None), "depth/000001.png: file not found"),
    _case("truncated_image", _truncate("images/000001.png"), "images/000001.png: unreadable"),
    _case("garbage_image", _file("images/000001.png", b"not a png" * 9), "corrupt image"),
    _case("image_size", _edit(width=100), "images/000001.png is 96x64", "width=100, height=64"),
    _case("lane_size", _file("lane/000001.png", np.zeros((32, 96), np.uint8)),
          "lane/000001.png is 96x32", "image is 96x64"),
    _case("drivable_size", _file("drivable/000001.png", np.zeros((64, 48), np.uint8)),
          "drivable/000001.png is 48x64", "image is 96x64"),
    _case("depth_size", _file("depth/000001.png", np.zeros((60, 96), np.uint16)),
          "depth/000001.png is 96x60", "image is 96x64"),
    _case("box_outside", _edit(boxes=[[8, 10, 120, 26]]), "box 0", "outside the 96x64 image"),
    _case("box_negative", _edit(boxes=[[-3, 10, 28, 26]]), "box 0", "outside the 96x64 image"),
    _case("box_degenerate", _edit(boxes=[[28, 10, 8, 26]]), "box 0", "degenerate"),
    _case("box_zero_width", _edit(boxes=[[8, 10, 8, 26]]), "box 0", "degenerate"),
    _case("box_nan", _line(NAN_LINE), "box 0 [nan,", "non-finite"),
    _case("box_inf", _edit(boxes=[[8, 10, float("inf"), 26]]), "box 0", "non-finite"),
    _case("unknown_label", _edit(labels=["truck"]),
          "label 'truck'", "not in dataset.yaml classes [car, pedestrian]"),
    _case("lane_values", _file("lane/000001.png", _mask_with(7)), MASK_VALUES_7),
    _case("drivable_values", _file("drivable/000001.png", _mask_with(2)), MASK_VALUES_2),
    _case("lane_rgb", _file("lane/000001.png", np.zeros((64, 96, 3), np.uint8)),
          "lane/000001.png", "single-channel uint8", "(64, 96, 3)"),
    _case("drivable_uint16", _file("drivable/000001.png", _mask_with(1, dtype=np.uint16)),
          "drivable/000001.png", "single-channel uint8", "got uint16"),
    _case("depth_uint8", _file("depth/000001.png", np.full((64, 96), 40, np.uint8)),
          "depth/000001.png", "single-channel uint16", "got uint8"),
    _case("camera_fx_zero", _edit(camera=Camera(0.0, 80.0, 48.0, 32.0)),
          "camera fx=0.0", "must be positive"),
    _case("camera_fy_negative", _edit(camera=Camera(80.0, -5.0, 48.0, 32.0)),
          "fy=-5.0", "must be positive"),
]  # fmt: skip


def test_valid_dataset_passes(tiny_dataset, capsys) -> None:
    root = tiny_dataset(num=4)
    problems, num = check_dataset(root)
    assert (problems, num) == ([], 4)
    code, out, err = _cli(root, capsys)
    assert code == 0
    assert out.strip() == "checked 4 samples: 0 problems"
    assert err == ""


def test_unlabeled_tasks_are_not_problems(tiny_dataset) -> None:
    """A missing task key means "not labeled", which is valid; ``boxes: []`` too."""
    root = tiny_dataset(num=3)
    records = v1.read_manifest(root)
    records[0] = replace(records[0], boxes=None, labels=None, lane=None, depth=None)
    records[1] = replace(records[1], boxes=[], labels=[], drivable=None, camera=None)
    write_manifest(root, records)
    assert check_dataset(root) == ([], 3)


@pytest.mark.parametrize(("mutate", "line", "sample_id", "expected"), CASES)
def test_each_problem_is_reported(
    mutate: Mutator,
    line: int,
    sample_id: str | None,
    expected: tuple[str, ...],
    tiny_dataset,
    capsys,
) -> None:
    root = tiny_dataset(num=3)
    _apply(root, mutate)
    problems, num = check_dataset(root)
    assert num == 3
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    assert problem.where == f"manifest.jsonl:{line}"
    assert problem.sample_id == sample_id
    for text in expected:
        assert text in problem.message, str(problem)
    code, out, _ = _cli(root, capsys)
    assert code == 1
    assert out.splitlines() == [str(problem), "checked 3 samples: 1 problem in 1 sample"]


def test_every_bad_sample_is_reported_in_manifest_order(tiny_dataset, capsys) -> None:
    root = tiny_dataset(num=12)
    records = v1.read_manifest(root)
    records[2] = replace(records[2], labels=["bus"] * len(records[2].labels))
    records[5] = replace(records[5], width=50)  # wrong size; box 1 (x2=58) now outside too
    records[9] = replace(records[9], camera=Camera(-1.0, 80.0, 48.0, 32.0))
    write_manifest(root, records)
    v1.write_png(root / "lane/000007.png", _mask_with(9))
    (root / "depth/000011.png").unlink()
    with (root / v1.MANIFEST_FILE).open("a") as f:
        f.write("\n{oops\n")  # a blank line (allowed) then a broken one: line 14

    problems, num = check_dataset(root, workers=4)
    assert num == 13
    lines = [int(p.where.split(":")[1]) for p in problems]
    assert lines == sorted(lines)
    by_id = [(p.sample_id, p.message.split(" ")[0]) for p in problems]
    assert by_id == [
        ("000002", "label"),
        ("000005", "box"),
        ("000005", "images/000005.png"),
        ("000007", "lane/000007.png"),
        ("000009", "camera"),
        ("000011", "depth/000011.png:"),
        (None, "not"),
    ]
    code, out, _ = _cli(root, capsys)
    assert code == 1
    assert out.splitlines()[-1] == "checked 13 samples: 7 problems in 6 samples"


def _write(name: str, text: str | None) -> Callable[[Path], object]:
    """Overwrite ``ROOT/name`` with ``text``, or delete it when ``text`` is None."""
    return lambda root: (root / name).unlink() if text is None else (root / name).write_text(text)


@pytest.mark.parametrize(
    ("damage", "where", "expected"),
    [
        pytest.param(_write("dataset.yaml", None), "dataset.yaml", "missing", id="no_yaml"),
        pytest.param(_write("dataset.yaml", "name: [x\n"), "dataset.yaml", "not valid YAML",
                     id="bad_yaml"),
        pytest.param(_write("dataset.yaml", "classes: car\n"), "dataset.yaml",
                     "'classes' must be a list", id="bad_classes"),
        pytest.param(_write("manifest.jsonl", None), "manifest.jsonl", "missing",
                     id="no_manifest"),
        pytest.param(_write("manifest.jsonl", "\n"), "manifest.jsonl", "no samples",
                     id="empty_manifest"),
    ],
)  # fmt: skip
def test_dataset_level_problems(damage, where, expected, tiny_dataset, capsys) -> None:
    root = tiny_dataset(num=2)
    damage(root)
    problems, _ = check_dataset(root)
    assert [(p.where, p.sample_id) for p in problems] == [(where, None)]
    assert expected in problems[0].message
    assert str(root) not in problems[0].message  # relative names only
    code, out, _ = _cli(root, capsys)
    assert code == 1
    assert out.splitlines()[0] == str(problems[0])


def test_non_utf8_line_is_one_problem(tiny_dataset) -> None:
    root = tiny_dataset(num=3)
    with (root / v1.MANIFEST_FILE).open("ab") as f:
        f.write(b'{"id": "caf\xe9"}\n')
    problems, num = check_dataset(root)
    assert num == 4
    assert [str(p) for p in problems] == ["manifest.jsonl:4: not valid UTF-8 text"]


def test_bad_dataset_yaml_does_not_stop_sample_checks(tiny_dataset) -> None:
    root = tiny_dataset(num=2)
    (root / "dataset.yaml").unlink()
    (root / "images/000001.png").unlink()
    problems, num = check_dataset(root)
    assert num == 2
    assert [p.where for p in problems] == ["dataset.yaml", "manifest.jsonl:2"]


def test_root_that_is_a_file_is_a_problem(tmp_path: Path, capsys) -> None:
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK")
    code, out, _ = _cli(path, capsys)
    assert code == 1
    assert "not a directory" in out.splitlines()[0]


def test_nonexistent_root_is_one_error_line(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    code, out, err = _cli(missing, capsys)
    assert code == 2
    assert out == ""
    expected = f"perception check-data: error: {missing}: no such dataset directory"
    assert err.splitlines() == [expected]


def test_problem_line_and_summary_format(capsys) -> None:
    problems = [
        Problem("manifest.jsonl:12", "000011", "lane/000011.png has values {0, 1, 7}"),
        Problem("manifest.jsonl:12", "000011", "box 0 is degenerate"),
        Problem("dataset.yaml", None, "missing"),
    ]
    assert str(problems[0]) == "manifest.jsonl:12 [000011]: lane/000011.png has values {0, 1, 7}"
    assert str(problems[2]) == "dataset.yaml: missing"
    print_report(problems, 200)
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary == "checked 200 samples: 3 problems in 1 sample"
    print_report([], 1)
    assert capsys.readouterr().out == "checked 1 sample: 0 problems\n"
