"""Training end to end on CPU: real learning, checkpoints, resume, eval, config errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import EVAL_KEYS

from perception.cli import main
from perception.data.datamodule import PerceptionDataModule
from perception.data.synthetic.scene import CLASSES
from perception.data.synthetic.writer import write_dataset
from perception.evaluation.metrics import combined_score
from perception.training.module import PerceptionModule
from perception.training.optim import OPTIMIZERS, build_optimizer, warmup_cosine

SIZE = (96, 160)
TINY = dict(net=dict(backbone="resnet18", neck_width=32, head_width=32), ema_decay=0.0)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default loggers write ./runs


def exit_code(args: list[str]) -> int:
    """``main``'s return value, or the code of the SystemExit jsonargparse raises."""
    try:
        return main(args)
    except SystemExit as err:
        return int(err.code)


def one_step_run(root: Path, *extra: str) -> list[str]:
    """``perception train`` arguments for a one-step CPU run on ``root``."""
    return ["train", "--data.train", f"[{root}]", "--data.num_workers", "0",
            "--trainer.max_steps", "1", "--trainer.accelerator", "cpu", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def synth32(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synth") / "s", num=32, seed=3, size=SIZE)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.history.append(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        )


def test_tiny_model_overfits_32_synthetic_images(synth32: Path):
    """Each task's loss must fall by at least 70% when memorizing 32 images."""
    torch.manual_seed(0)
    module = PerceptionModule(
        **TINY, combiner="fixed", optimizer="adam", lr=3e-3, warmup_steps=10, overlay_images=0
    )
    data = PerceptionDataModule(
        train=[str(synth32)],
        classes=list(CLASSES),
        image_size=SIZE,
        batch_size=8,
        num_workers=0,
        augment=False,
    )
    recorder = LossRecorder()
    trainer = L.Trainer(
        max_steps=300,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    first, last = recorder.history[:8], recorder.history[-8:]
    for key in ("train/det", "train/seg", "train/depth"):
        start = sum(h[key] for h in first) / len(first)
        end = sum(h[key] for h in last) / len(last)
        assert end <= 0.3 * start, f"{key}: {start:.4f} -> {end:.4f} (< 70% drop)"


def test_fit_checkpoints_resume_and_eval(synth32: Path, tmp_path: Path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {**TINY, "ema_decay": 0.9, "overlay_images": 2},
                "data": {
                    "train": [str(synth32)],
                    "val_fraction": 0.25,
                    "image_size": list(SIZE),
                    "batch_size": 8,
                    "num_workers": 0,
                },
                "trainer": {
                    "max_epochs": 2,
                    "accelerator": "cpu",
                    "default_root_dir": str(tmp_path),
                    "enable_progress_bar": False,
                    "log_every_n_steps": 1,
                    "logger": [
                        {
                            "class_path": "lightning.pytorch.loggers.CSVLogger",
                            "init_args": {"save_dir": str(tmp_path / "logs")},
                        },
                        {
                            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                            "init_args": {"save_dir": str(tmp_path / "tb")},
                        },
                    ],
                },
            }
        )
    )
    assert main(["train", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    ckpts = sorted(tmp_path.rglob("version_*/**/*.ckpt"))
    names = {c.name for c in ckpts}
    assert f"checkpoints in {ckpts[0].parent}" in printed  # said before training
    for name in ("last.ckpt", "best.ckpt"):  # stable names at the root, whatever the version
        assert (tmp_path / name).resolve() in {c.resolve() for c in ckpts}, name
        assert f"{tmp_path / name} -> " in printed
    assert "last.ckpt" in names and any(n.startswith("best-") for n in names)
    assert list(tmp_path.rglob("overlays/*.jpg")), "validation overlays were not written"
    metrics_csv = next((tmp_path / "logs").rglob("metrics.csv")).read_text()
    assert "train/weight_det" in metrics_csv and "val/score" in metrics_csv

    last = next(c for c in ckpts if c.name == "last.ckpt")
    step_before = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    resume = ["train", "--config", str(config), "--trainer.max_epochs", "3", "--ckpt_path"]
    assert main([*resume, str(last)]) == 0
    newest = max(tmp_path.rglob("version_*/**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert torch.load(newest, map_location="cpu", weights_only=True)["global_step"] > step_before
    assert (tmp_path / "last.ckpt").resolve() == newest.resolve()  # the link follows the run
    csvs = (tmp_path / "logs").rglob("metrics.csv")
    newest_csv = max(csvs, key=lambda p: p.stat().st_mtime)
    assert (tmp_path / "metrics.csv").resolve() == newest_csv.resolve()

    out_json = tmp_path / "metrics.json"
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--weights",
                str(last),
                "--data",
                str(synth32),
                "--json",
                str(out_json),
                "--workers",
                "0",
                "--limit",
                "8",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "det/mAP50_95" in table and "depth/abs_rel" in table
    metrics = json.loads(out_json.read_text())
    assert list(metrics) == EVAL_KEYS and metrics["num_images"] == 8


def test_last_checkpoint_is_the_final_step_between_validations(synth32: Path, tmp_path: Path):
    """24 training images in batches of 8 validate every 3 steps; ``max_steps`` 4 stops one
    step after the last validation, and ``last.ckpt`` must hold step 4, not step 3."""
    args = one_step_run(synth32, "--trainer.max_steps", "4", "--data.batch_size", "8",
                        "--data.val_fraction", "0.25", "--data.image_size", str(list(SIZE)),
                        "--model.net.neck_width", "32", "--model.net.head_width", "32",
                        "--trainer.default_root_dir", str(tmp_path / "run"),
                        "--trainer.enable_progress_bar", "false")  # fmt: skip
    assert main(args) == 0
    last = torch.load(tmp_path / "run/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4
    best = torch.load(tmp_path / "run/best.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == 3  # the validated step keeps its own checkpoint


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.not_a_key", "1"], "not_a_key"),
        (["--model.net.backbone", "resnet181"], "resnet18"),
        (["--model.optimizer", "adamx"], "adamw"),
    ],
)
def test_bad_configuration_gives_a_clear_error(synth32: Path, override, message, capsys):
    assert exit_code(one_step_run(synth32, *override)) == 2
    assert message in capsys.readouterr().err


def test_class_mismatch_and_unlabeled_head_are_refused(synth32: Path, tmp_path: Path, capsys):
    assert exit_code(one_step_run(synth32, "--model.class_names", "[car, van]")) == 2
    assert "truck" in capsys.readouterr().err  # the unmapped dataset classes are named

    stripped = tmp_path / "no_drivable"
    stripped.mkdir()
    for item in synth32.iterdir():
        (stripped / item.name).symlink_to(item)
    (stripped / "manifest.jsonl").unlink()
    lines = []
    for line in (synth32 / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("drivable")
        lines.append(json.dumps(record))
    (stripped / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    assert exit_code(one_step_run(stripped)) == 2
    assert "no training sample is labeled for drivable" in capsys.readouterr().err


def test_every_optimizer_builds_and_schedule_warms_up_then_decays():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    for name in OPTIMIZERS:
        optimizer = build_optimizer(name, model, lr=0.1, weight_decay=0.01)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    factor = warmup_cosine(total_steps=100, warmup_steps=10)
    values = [factor(s) for s in range(100)]
    assert values[0] < values[9] <= 1.0 and values[10] == pytest.approx(1.0)
    assert values[-1] < 0.1 and all(a >= b for a, b in itertools.pairwise(values[10:]))


def test_combined_score_ignores_missing_tasks():
    assert combined_score({"det/mAP50_95": 0.5, "lane/iou": float("nan")}) == 0.5
    assert combined_score({}) == 0.0


def test_training_curves_plot_from_metrics_csv(tmp_path: Path):
    from perception.training.curves import plot_curves, read_series

    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,step,train/det,train/seg,val/lane/iou\n0,0,2.0,1.0,\n0,10,1.0,0.5,\n0,10,,,0.4\n"
    )
    series = read_series(csv_path)
    assert series["train/det"] == [(0, 2.0), (10, 1.0)] and series["val/lane/iou"] == [(10, 0.4)]
    assert plot_curves(csv_path, tmp_path / "c.png").stat().st_size > 5000
    resumed = tmp_path / "resumed.csv"  # a resume logs to a new CSV, other column order
    resumed.write_text("step,epoch,train/seg,train/det\n10,0,0.6,1.1\n20,1,0.25,0.5\n")
    series = read_series([csv_path, resumed])
    assert series["train/det"] == [(0, 2.0), (10, 1.1), (20, 0.5)]
    assert series["val/lane/iou"] == [(10, 0.4)]


def test_ema_updates_once_per_optimizer_step_under_gradient_accumulation(synth32: Path):
    module = PerceptionModule(**{**TINY, "ema_decay": 0.9}, image_size=SIZE, overlay_images=0)
    data = PerceptionDataModule(
        train=[str(synth32)], classes=list(CLASSES), image_size=SIZE, batch_size=4, num_workers=0
    )
    trainer = L.Trainer(
        max_steps=3, accumulate_grad_batches=2, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, data)
    assert trainer.global_step == 3 and int(module.ema.updates) == 3  # 6 micro-batches


@pytest.mark.parametrize("global_zero", [True, False])
def test_only_the_global_zero_rank_writes_overlays(
    synth32: Path, tmp_path, monkeypatch, global_zero
):
    """Under DDP every rank validates; one set of overlay files, not one per rank."""
    monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda self: global_zero))
    module = PerceptionModule(**TINY, image_size=SIZE, overlay_images=1)
    data = PerceptionDataModule(
        train=[str(synth32)], val=[str(synth32)], classes=list(CLASSES), image_size=SIZE,
        batch_size=4, num_workers=0,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", limit_val_batches=1, enable_progress_bar=False,
        default_root_dir=str(tmp_path), logger=L.pytorch.loggers.CSVLogger(str(tmp_path)),
    )  # fmt: skip
    trainer.validate(module, data)
    assert bool(list(tmp_path.rglob("overlays/*.jpg"))) == global_zero


def test_newest_checkpoints_are_linked_into_a_root_the_logger_never_made(tmp_path: Path):
    """The CSV logger (and so the checkpoints) may live outside ``default_root_dir``: the
    links still land there, in a folder made for them."""
    from types import SimpleNamespace

    from perception.training.run_paths import RunPaths

    ckpt = tmp_path / "logs/version_0/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    root = tmp_path / "not/made/yet"
    trainer = SimpleNamespace(
        checkpoint_callback=SimpleNamespace(last_model_path=str(ckpt), best_model_path=""),
        default_root_dir=str(root),
        loggers=[],
    )
    RunPaths().on_fit_end(trainer, None)
    assert (root / "last.ckpt").read_bytes() == b"weights"
