"""The command line: fast help, one-line errors, thin tools/ wrappers."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perception.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_is_fast_and_lists_commands():
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "perception.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert time.perf_counter() - start < 2.0
    assert "synth" in out.stdout and "check-data" in out.stdout


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys, perception.cli; perception.cli.build_parser(); "
        "print('torch' in sys.modules, 'cv2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "args",
    [["synth", "--out", "x", "--num", "0"], ["synth", "--out", "x", "--num", "2", "--size", "big"]],
)
def test_bad_arguments_exit_2_with_one_line(args, capsys):
    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_tools_wrapper_runs_the_subcommand(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_data.py"), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("perception check-data: error:")
    assert len(out.stderr.strip().splitlines()) == 1


def test_every_subcommand_has_a_tools_wrapper():
    from perception.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        script = ROOT / "tools" / f"{name.replace('-', '_')}.py"
        assert script.is_file(), f"missing {script}"
        assert f'main(["{name}", *sys.argv[1:]])' in script.read_text()


def test_version_prints_the_package_version(capsys):
    from perception import __version__

    with pytest.raises(SystemExit) as err:
        main(["--version"])
    assert err.value.code == 0
    assert capsys.readouterr().out.strip() == f"perception {__version__}"


TRAIN_MISTAKES = {
    "missing config": (["--config", "nope.yaml"], "config file not found: .*nope.yaml"),
    "unknown key on the command line": (
        ["--model.lrr", "3"],
        r"unknown key 'model\.lrr'.*model\.lr\b",
    ),
    "unknown key in YAML": (
        ["--config", "{yaml}"],
        r"unknown key 'data\.batchsize'.*data\.batch_size",
    ),
    "abbreviated key": (["--config", "{good}", "--trainer.max_step", "3"], "trainer.max_steps"),
    "wrong type": (["--config", "{good}", "--data.batch_size", "x"], r"data\.batch_size.*int"),
}


@pytest.mark.parametrize("mistake", TRAIN_MISTAKES, ids=list(TRAIN_MISTAKES))
def test_train_config_mistakes_are_one_line_naming_the_key(mistake, tmp_path, capsys):
    """Not jsonargparse's usage dump, which names a 'fit' subcommand nobody typed; and an
    abbreviated key is refused rather than silently taken for a longer one."""
    good = tmp_path / "good.yaml"
    good.write_text("model: {class_names: [car]}\ndata: {train: [nowhere]}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {class_names: [car]}\ndata: {train: [nowhere], batchsize: 4}\n")
    args, expected = TRAIN_MISTAKES[mistake]
    args = [a.format(yaml=bad, good=good) for a in args]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("perception train: error:") and "\n" not in err and "fit" not in err
    assert re.search(expected, err), err


def test_every_subcommand_help_states_its_defaults():
    from perception.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    assert "(default: 8)" in sub["eval"].format_help()
    assert "(default: 384x640)" in sub["synth"].format_help()
    assert "(default: 0)" in sub["synth"].format_help()  # a zero default is still stated
    assert ".onnx" in sub["eval"].format_help()  # eval runs exported graphs too


def test_synth_says_what_it_wrote(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--num", "2", "--size", "64x96"]) == 0
    out = capsys.readouterr().out
    assert f"2 images of 64x96 labeled det,lane,drivable,depth in {tmp_path / 's'}" in out


def test_curves_on_a_missing_or_foreign_file_is_one_clear_error(tmp_path):
    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b\n1,2\n")
    for source, expected in ((tmp_path / "none.csv", "not found"), (foreign, "no 'step'")):
        out = subprocess.run(
            [sys.executable, "-m", "perception.training.curves", str(source), "x.png"],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 1 and out.stderr.startswith("curves: error:"), out.stderr
        assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1
