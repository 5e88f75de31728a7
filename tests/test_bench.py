"""``perception bench``: every runtime timed, scored on data, ratios and JSON written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RELEASE_SIZE, write_tiny_release

from perception.benchmark.speed import timed
from perception.cli import main
from perception.data.synthetic.writer import write_dataset
from perception.errors import PerceptionError
from perception.training.precision import cpu_has_native_bf16


def test_bench_times_every_runtime_and_scores_each(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    data = tmp_path / "data"
    write_dataset(data, num=6, seed=0, size=TINY_RELEASE_SIZE)  # the release's classes
    out = tmp_path / "bench.json"
    args = ["bench", "--weights", str(weights), "--iters", "2", "--batch", "2", "--data",
            str(data), "--train-steps", "2", "--workers", "0", "--json", str(out),
            "--int8", "qdq:conv,qoperator:all", "--frame", "48x80",
            "--rounds", "2"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| torch eager fp32 | cpu | 1 |" in printed and "ratios:" in printed
    report = json.loads(out.read_text())
    rows = {(r["variant"], r["batch"]): r for r in report["rows"]}
    int8 = ("onnxruntime int8 qdq:conv", "onnxruntime int8 qoperator:all")
    for variant in ("torch eager fp32", "onnxruntime fp32", "onnxruntime fp16", *int8):
        for batch in (1, 2):
            row = rows[(variant, batch)]
            assert row["latency_ms"] > 0 and row["images_per_s"] > 0
        assert rows[(variant, 1)]["metrics"]["num_images"] == 6  # scored at batch 1
    default = "bf16 channels_last" if cpu_has_native_bf16() else "fp32 channels_last"
    trained = ["fp32", "fp32 channels_last", *(["bf16 channels_last"] * cpu_has_native_bf16())]
    for setting in trained:
        assert rows[(f"train model-only {setting}", 2)]["images_per_s"] > 0
    assert [v for v, _ in rows if v.startswith("train end-to-end")] == [
        f"train end-to-end {default}"
    ]
    assert rows[(f"train end-to-end {default}", 2)]["images_per_s"] > 0
    if cpu_has_native_bf16():  # bf16 is timed and scored where the CPU multiplies it
        assert rows[("torch eager bf16", 1)]["metrics"]["num_images"] == 6
        assert report["ratios"]["torch_bf16_vs_torch_fp32"] > 0
        assert report["ratios"]["predictor_torch_bf16_vs_predictor_ort"] > 0
    # with --rounds and no peer: fp32 against the first INT8 setting given, alternating
    alt = report["int8_rounds"]
    assert alt["setting"] == "qdq:conv" and len(alt["fp32_ms"]) == len(alt["int8_ms"]) == 2
    per_round = [round(a / b, 2) for a, b in zip(alt["fp32_ms"], alt["int8_ms"], strict=True)]
    assert alt["fp32_over_int8"] == per_round
    assert report["ratios"]["ort_int8_vs_ort_fp32_rounds"] == alt["median"]
    assert "int8 qdq:conv: fp32/int8 per round" in printed
    assert "- INT8 >= 2x onnxruntime fp32 (median of alternating rounds): " in printed
    assert set(report["ratios"]) >= {
        "ort_fp32_vs_torch_fp32",
        "ort_int8_vs_ort_fp32",
        "ort_int8_qdq_conv_vs_ort_fp32",
        "ort_int8_qoperator_all_vs_ort_fp32",
        "train_end_to_end_vs_model_only",
        "train_fp32_channels_last_vs_fp32",
    }
    # the same weights in every runtime: fp32 accuracy must agree with eager exactly enough
    torch_m, ort_m = (
        rows[("torch eager fp32", 1)]["metrics"],
        rows[("onnxruntime fp32", 1)]["metrics"],
    )
    assert abs(torch_m["depth/abs_rel"] - ort_m["depth/abs_rel"]) < 1e-3
    settings = ("qdq_conv", "qoperator_all")
    fastest = max(report["ratios"][f"ort_int8_{s}_vs_ort_fp32"] for s in settings)
    assert report["ratios"]["ort_int8_vs_ort_fp32"] == fastest
    capsys.readouterr()
    assert main([*args[:-4], "--int8", "qlinear:all"]) == 2
    assert "INT8 format 'qlinear'; valid: qdq, qoperator" in capsys.readouterr().err
    assert report["image_size"] == list(TINY_RELEASE_SIZE)
    for runtime in ("torch", "onnxruntime"):  # the whole Predictor call on a 48x80 frame
        assert rows[(f"predictor {runtime} fp32", 1)]["latency_ms"] > 0
    assert {"predictor_torch_vs_model_only", "predictor_ort_vs_model_only"} <= set(report["ratios"])
    assert report["ratios"]["predictor_torch_vs_predictor_ort"] > 0


def test_bench_refuses_training_without_data(tmp_path: Path) -> None:
    from perception.benchmark import run_bench

    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    with pytest.raises(PerceptionError, match="--train-steps needs --data"):
        run_bench(weights, train_steps=3, onnx=False)


def test_timed_counts_only_the_timed_calls() -> None:
    calls = []
    seconds = timed(lambda: calls.append(torch.ones(1)), warmup=2, iters=5)
    assert len(calls) == 7 and seconds.shape == (5,) and np.all(seconds >= 0)


def test_bench_times_a_peer_beside_ours_and_describes_the_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    (tmp_path / "mypeer.py").write_text(
        "import torch\n"
        "def net():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())\n"
    )
    out = tmp_path / "bench.json"
    args = ["bench", "--weights", str(weights), "--iters", "2", "--batch", "2", "--no-onnx",
            "--peer", f"{tmp_path / 'mypeer.py'}:net", "--rounds", "3",
            "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {(r["variant"], r["batch"]): r for r in report["rows"]}
    for batch in (1, 2):
        assert rows[("peer net torch eager fp32", batch)]["latency_ms"] > 0
    peer_cost = report["cost"]["peer net"]
    assert peer_cost["params"] == 3 * 8 * 9 + 8
    h, w = TINY_RELEASE_SIZE  # one 3x3 conv, 3 -> 8 channels, no padding: 2 FLOPs per MAC
    assert peer_cost["gflops"] == pytest.approx(2 * 3 * 8 * 9 * (h - 2) * (w - 2) / 1e9)
    assert report["cost"]["ours"]["params"] > 1e6
    ratio = report["ratios"]["peer_net_vs_ours_same_runtime"]
    expected = (
        rows[("peer net torch eager fp32", 1)]["latency_ms"]
        / rows[("torch eager fp32", 1)]["latency_ms"]
    )
    assert ratio == pytest.approx(expected, abs=0.01)
    assert "peer net 0.00 M params" in printed and "peer_net_vs_our_fastest" in printed
    rounds = report["peer_rounds"]["net"]["fp32"]  # alternating blocks, one pair per round
    assert len(rounds["ours_ms"]) == len(rounds["net_ms"]) == 3
    per_round = [round(p / o, 2) for p, o in zip(rounds["net_ms"], rounds["ours_ms"], strict=True)]
    assert rounds["peer_over_ours"] == per_round
    assert report["ratios"]["peer_net_vs_ours_rounds"] == sorted(per_round)[1]  # the median
    assert "net fp32: net/ours per round" in printed
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] == torch.__version__
    assert isinstance(machine["isa"], list) and machine["onnxruntime"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "expected module:function"),
        ("no_such_module_xyz:net", "cannot import 'no_such_module_xyz'"),
        ("math:no_such_function", "math has no function 'no_such_function'"),
        ("math:pi", "has no function 'pi'"),
        ("collections:OrderedDict", "returned OrderedDict, not a torch nn.Module"),
        ("missing_dir/peer.py:net", "no file missing_dir/peer.py"),
    ],
)
def test_bad_peer_specs_are_one_clear_error(spec: str, message: str) -> None:
    from perception.benchmark.peer import build_peer

    with pytest.raises(PerceptionError, match=message):
        build_peer(spec)


def test_rounds_swap_which_network_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ours first in even rounds, the peer first in odd ones, so that following the
    other network's block never falls on one network only."""
    from perception.benchmark import run as bench_run
    from perception.benchmark.speed import Row

    ours, peer = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 5, 1)
    order = []

    def fake_inference(net, size, batch, dev, precision, iters):
        order.append("ours" if net.out_channels == 4 else "peer")
        return Row("torch eager fp32", "cpu", 1, 2.0 if order[-1] == "ours" else 3.0, 3.0, 1.0)

    monkeypatch.setattr(bench_run, "torch_inference", fake_inference)
    # Pinned: which precisions a CPU times depends on its ISA, and this test must not.
    monkeypatch.setattr(bench_run, "torch_precisions", lambda dev: ("fp32", "bf16"))
    out = bench_run.peer_rounds(ours, peer, "peer", (8, 8), torch.device("cpu"), 4, 2)
    assert order == ["ours", "peer", "peer", "ours", "ours", "peer", "peer", "ours"] * 2
    for precision in ("fp32", "bf16"):
        assert out[precision]["ours_ms"] == [2.0] * 4
        assert out[precision]["peer_over_ours"] == [1.5] * 4


def test_int8_rounds_alternate_fp32_and_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two exports swap places every round, like two networks do."""
    from perception.benchmark import run as bench_run
    from perception.benchmark.speed import Row

    order = []

    def fake_onnx(path, size, batch, variant, threads, iters):
        order.append(path)
        return Row(variant, "cpu", 1, 5.0 if path == "fp32.onnx" else 2.0, 5.0, 1.0)

    monkeypatch.setattr(bench_run, "onnx_inference", fake_onnx)
    out = bench_run.int8_rounds("fp32.onnx", "int8.onnx", "qdq:all", (8, 8), 3, 2, None)
    assert order == ["fp32.onnx", "int8.onnx", "int8.onnx", "fp32.onnx", "fp32.onnx", "int8.onnx"]
    assert out["fp32_over_int8"] == [2.5] * 3 and out["median"] == 2.5


def test_rounds_need_a_peer_or_int8_rows() -> None:
    from perception.benchmark import run_bench

    for kwargs in ({}, {"calib": "some/dir", "onnx": False}):
        with pytest.raises(PerceptionError, match="needs a peer or INT8 rows"):
            run_bench("any.safetensors", rounds=3, **kwargs)


def test_a_peer_that_cannot_take_the_input_is_named() -> None:
    from perception.benchmark.peer import check_runs

    with pytest.raises(PerceptionError, match=r"forward pass on a 1x3x64x96 batch failed"):
        check_runs("x:y", torch.nn.Linear(5, 2), (64, 96))


def _tiny_training(tmp_path: Path, num: int, workers: int):
    """The tiny release and a training loader of batch 2 over ``num`` rendered images."""
    from perception.checkpoints import load_model
    from perception.data.datamodule import PerceptionDataModule

    loaded = load_model(write_tiny_release(tmp_path / "tiny.safetensors"))
    data = tmp_path / "data"
    write_dataset(data, num=num, seed=0, size=TINY_RELEASE_SIZE)
    dm = PerceptionDataModule(
        [str(data)], loaded.meta.class_names, image_size=TINY_RELEASE_SIZE, batch_size=2,
        num_workers=workers,
    )  # fmt: skip
    return loaded.model, dm.train_dataloader()


def test_training_model_only_steps_through_the_batches_end_to_end_loads(
    tmp_path: Path,
) -> None:
    """The two training rows differ by the loading only: model-only trains on the very
    batches the end-to-end row then loads afresh (one reused batch made the ratio a draw)."""
    from perception.benchmark.speed import training_throughput

    model, loader = _tiny_training(tmp_path, num=8, workers=0)
    seen = []  # a fingerprint of each batch the network is stepped on
    model.register_forward_hook(lambda m, args, out: seen.append(float(args[0].sum())))
    rows = training_throughput(model, loader, torch.device("cpu"), 3)
    assert [r.variant for r in rows] == [
        "train model-only fp32 channels_last",
        "train end-to-end fp32 channels_last",
        "train loading only",
    ]
    assert len(seen) == 10 and len(set(seen[:5])) > 1  # 2 warm-up + 3 timed, per row
    assert seen[5:] == pytest.approx(seen[:5])  # 8 samples: the fifth batch starts over
    assert all(r.latency_ms > 0 and r.batch == 2 for r in rows)


def test_loading_is_timed_in_one_process(tmp_path: Path) -> None:
    """With workers, the next batch is one they loaded ahead, and its wait says nothing of
    what loading costs: the loading row reads the same batches in this process."""
    from perception.benchmark.speed import in_one_process

    _, loader = _tiny_training(tmp_path, num=6, workers=1)
    alone = in_one_process(loader)
    assert loader.num_workers == 1 and alone.num_workers == 0
    assert in_one_process(alone) is alone  # already in one process: the loader itself
    by_workers = [float(b.images.float().sum()) for b in loader]
    in_process = [float(b.images.float().sum()) for b in alone]
    assert len(by_workers) == 3 and in_process == by_workers  # the same batches


def test_cpu_info_reads_the_first_processor(tmp_path: Path) -> None:
    from perception.benchmark.machine import cpu_info

    block = (
        "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
        "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
    )
    path = tmp_path / "cpuinfo"
    path.write_text(block.format(n=0) + block.format(n=1).replace("26", "25"))
    info = cpu_info(path)
    assert info["model"] == "AMD EPYC" and info["family_model"] == "family 26, model 2"
    assert info["flags"] == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_info(tmp_path / "missing")["family_model"] is None  # not Linux: no numbers


def test_the_machine_counts_the_cpus_the_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under taskset (two cores of a larger machine) the figures were measured on two CPUs,
    and the description says two, not the machine's count."""
    import os

    from perception.benchmark.machine import describe_machine
    from perception.ops.cpus import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    machine = describe_machine(torch.device("cpu"))
    assert machine["cpu_count"] == 2 and machine["ort_threads"] == 2
    # onnxruntime sessions get what the description says: the usable CPUs, or the request
    assert default_threads() == 2 and default_threads(3) == 3
