"""Weights files come from elsewhere: every kind of broken or hostile file is one clear
error naming the file, and nothing in it runs."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_release

from perception.errors import PerceptionError
from perception.inference import Predictor


class _RunsCode:
    """Unpickling this object touches a marker file: proof that a loader ran code."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _valid_ckpt(path: Path) -> bytes:
    torch.save({"hyper_parameters": {"class_names": ["car"]}, "state_dict": {}}, path)
    return path.read_bytes()


def _valid_onnx(path: Path) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [])
    graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1]))
    onnx.save_model(helper.make_model(graph), str(path))
    return path.read_bytes()


def _hostile(kind: str, suffix: str, tmp_path: Path) -> Path:
    """A file of the given ``kind`` with the given weights suffix."""
    good = {
        ".safetensors": lambda p: write_tiny_release(p).read_bytes(),
        ".ckpt": _valid_ckpt,
        ".onnx": _valid_onnx,
    }[suffix](tmp_path / f"good{suffix}")
    code = _RunsCode()
    code.marker = tmp_path / "code-ran"
    if kind == "pickled-code" and suffix == ".ckpt":  # the way a real attack looks: torch.save
        torch.save({"hyper_parameters": {}, "state_dict": {"w": code}}, tmp_path / "x.ckpt")
        data = (tmp_path / "x.ckpt").read_bytes()
    else:
        data = {
            "empty": b"",
            "truncated": good[: len(good) // 2],
            "random-bytes": os.urandom(4096),
            "pickled-code": pickle.dumps(code),
        }[kind]
    path = tmp_path / f"{kind}{suffix}"
    path.write_bytes(data)
    return path


KINDS = ("empty", "truncated", "random-bytes", "pickled-code")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt", ".onnx"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_broken_or_hostile_weights_file_is_one_clear_error(
    kind: str, suffix: str, tmp_path: Path
) -> None:
    path = _hostile(kind, suffix, tmp_path)
    with pytest.raises(PerceptionError) as err:
        Predictor(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message and len(message) < 400
    assert not (tmp_path / "code-ran").exists(), "the loader ran code from the file"


def test_the_code_in_the_hostile_pickle_really_runs_when_unpickled(tmp_path: Path) -> None:
    """The catalogue's hostile files are real: unpickled naively, they would run code."""
    path = _hostile("pickled-code", ".safetensors", tmp_path)
    pickle.loads(path.read_bytes())
    assert (tmp_path / "code-ran").exists()


def _edit_metadata(release: Path, out: Path, **config) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(release), framework="pt") as f:
        meta = json.loads(f.metadata()["perception"])
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    meta["config"].update(config)
    save_file(weights, str(out), metadata={"perception": json.dumps(meta)})
    return out


def test_metadata_that_does_not_fit_the_weights_names_the_tensors(tmp_path: Path) -> None:
    release = write_tiny_release(tmp_path / "r.safetensors")
    wider = _edit_metadata(release, tmp_path / "wider.safetensors", neck_width=24)
    with pytest.raises(PerceptionError, match=r"do not fit .*shape \d+: neck\.") as err:
        Predictor(wider)
    assert "in the file" in str(err.value) and "\n" not in str(err.value)
    other = _edit_metadata(release, tmp_path / "other.safetensors", backbone="resnet34")
    with pytest.raises(PerceptionError, match=r"do not fit .*missing \d+: backbone\."):
        Predictor(other)


def test_metadata_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    release = write_tiny_release(tmp_path / "r.safetensors")
    odd = _edit_metadata(release, tmp_path / "odd.safetensors", wings=2)
    with pytest.raises(PerceptionError, match="wings"):
        Predictor(odd)
