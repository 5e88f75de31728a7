"""The README's inference example runs as printed (against the committed release)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _section_code(title: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_inference_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    blocks = _section_code("Python API (inference)")
    assert blocks, "the README lost its inference example"
    for name in ("weights", "docs"):  # the example's relative paths, outputs in tmp
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)
    pred, same = namespace["pred"], namespace["same"]
    assert namespace["overlay"].shape == (*pred.depth.shape, 3)
    assert len(pred) > 0 and len(same) == len(pred)  # torch and onnxruntime agree
    assert capsys.readouterr().out.count("\n") == 7
    assert str(namespace["fast"].backend.dtype) == "torch.bfloat16"
    assert namespace["big"].image_size == (384, 640) and namespace["p"].image_size == (288, 480)
    wide, w = namespace["wide"], pred.depth.shape[1]
    assert pred.camera_default and not wide.camera_default
    ratio = (0.5 * w) / pred.camera[0]  # depth scales with the focal length, exactly
    assert abs(float(wide.depth.mean() / pred.depth.mean()) - ratio) < 1e-3 * ratio


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")  # no GPU providers in CI
def test_deploy_guide_standalone_onnxruntime_snippet_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from conftest import TINY_RELEASE_CLASSES, write_tiny_release

    from perception.export import export_onnx

    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("## 3. onnxruntime on the board\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    standalone = [b for b in blocks if "perception" not in b]
    assert len(standalone) == 1
    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    export_onnx(weights, tmp_path / "model_nms.onnx", nms=True)
    monkeypatch.chdir(tmp_path)
    exec(compile(standalone[0], "deploy.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("[") and any(name in printed for name in TINY_RELEASE_CLASSES)


def test_readme_class_map_and_convert_commands_are_valid(tmp_path: Path) -> None:
    """The class-map example loads as printed and every convert line parses."""
    import shlex

    from perception.cli import build_parser
    from perception.data.formats.convert import ClassMap

    text = (REPO / "README.md").read_text()
    section = text.split("### `perception convert`", 1)[1].split("\n### ", 1)[0]
    (example,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    (tmp_path / "map.yaml").write_text(example)
    cmap = ClassMap.load(tmp_path / "map.yaml", default={})
    assert cmap.classes == ["vehicle", "person"] and cmap("rider") == "person"
    assert cmap("traffic light") is None and cmap.dropped == {"traffic light": 1}
    (bash,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = bash.replace("\\\n", " ").splitlines()
    converts = [c for c in commands if c.startswith("perception convert")]
    assert len(converts) == 3
    for line in converts:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.format in {"bdd100k", "kitti"} and args.out.startswith("data/")
    assert any("configs/bdd100k_kitti.yaml" in c for c in commands)


def test_readme_multi_gpu_commands_and_keys_parse(capsys: pytest.CaptureFixture[str]) -> None:
    """Every training line of the several-GPUs section, and every config key it names,
    is accepted by ``perception train`` (checked with ``--print_config``: nothing runs)."""
    import shlex

    from perception.training.cli import run_train

    text = (REPO / "README.md").read_text()
    section = text.split("### Several GPUs or nodes", 1)[1].split("\n## ", 1)[0]
    lines = [
        line
        for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
        for line in block.replace("\\\n", " ").splitlines()
        if " train --config " in line
    ]
    assert len(lines) == 3  # one machine, torchrun, SLURM
    keys = sorted(set(re.findall(r"`((?:trainer|data|model)\.[a-z_]+)", section)))
    assert len(keys) >= 6
    values = {"trainer.sync_batchnorm": "true", "trainer.accumulate_grad_batches": "2"}
    for line in lines:
        argv = shlex.split(line.split(" train ", 1)[1])
        extra = [a for k in keys if k in values for a in (f"--{k}", values[k])]
        with pytest.raises(SystemExit) as done:
            run_train([*argv, *extra, "--print_config"])
        assert done.value.code in (0, None)
        printed = capsys.readouterr().out
        assert re.search(r"devices: '?4'?\n", printed) and "sync_batchnorm: true" in printed
    for key in keys:  # each named key exists in the printed config
        assert f"{key.split('.')[1]}:" in printed, key
