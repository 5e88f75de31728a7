"""``perception predict``: an image, a folder and a video in; overlays (and raw) out."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY_RELEASE_CLASSES, write_tiny_release

from perception.cli import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_release(tmp_path_factory.mktemp("w") / "tiny.safetensors")


def _write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def test_predict_image_and_folder_write_overlays_and_raw(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = _write_images(tmp_path / "in", [(72, 128), (90, 60)])
    (tmp_path / "in" / "notes.txt").write_text("not an image")  # ignored in a folder
    out = tmp_path / "out"
    args = ["predict", "--weights", str(weights), "--out", str(out), "--conf", "0.3"]
    camera = ["--camera", "90,90,40.5,30"]  # the camera each raw file records
    assert main([*args, "--source", str(tmp_path / "in"), "--save-raw", *camera]) == 0
    assert "predicted 2 image(s)" in capsys.readouterr().out
    for path in images:
        overlay = cv2.imread(str(out / f"{path.stem}.jpg"))
        assert overlay.shape[:2] == cv2.imread(str(path)).shape[:2]  # original size
        raw = np.load(out / f"{path.stem}.npz")
        assert raw["depth"].shape == overlay.shape[:2] and raw["boxes"].shape[1] == 4
        assert list(raw["class_names"]) == TINY_RELEASE_CLASSES
        np.testing.assert_array_equal(raw["camera"], np.float32([90, 90, 40.5, 30]))
    # existing outputs are never replaced silently; the run fails before writing anything
    before = (out / "img0.jpg").read_bytes()
    assert main([*args, "--source", str(images[0])]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "img0.jpg").read_bytes() == before
    assert main([*args, "--source", str(images[0]), "--overwrite", "--backend", "onnx"]) == 0
    # the torch backend in bf16 (the fast path on CPUs with AMX / AVX512-BF16): close to fp32
    bf16 = ["predict", "--weights", str(weights), "--out", str(tmp_path / "bf16"),
            "--source", str(images[0]), "--save-raw", "--precision", "bf16", *camera]  # fmt: skip
    assert main(bf16) == 0
    depth = np.load(tmp_path / "bf16" / "img0.npz")["depth"]
    np.testing.assert_allclose(depth, np.load(out / "img0.npz")["depth"], rtol=0.05)


def test_predict_video_writes_an_mp4_of_overlays(weights: Path, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(5):
        writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
    writer.release()
    assert main(["predict", "--weights", str(weights), "--source", str(video),
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    assert size == (96, 64)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jpg", "no such file"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no images"),
        (lambda d: (d / "a.txt").write_text("x") and d / "a.txt", "not an image or video"),
        (lambda d: (d / "bad.mp4").write_text("x") and d / "bad.mp4", "video"),
    ],
)
def test_predict_bad_sources_get_one_line(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture, make, message: str
) -> None:
    source = make(tmp_path)
    code = main(["predict", "--weights", str(weights), "--source", str(source),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
