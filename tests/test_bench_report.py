"""The bench's targets and its Markdown section, torch.compile rows, and the GPU suite's
code run end to end on the CPU (the precision and compile switches it uses on a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RELEASE_SIZE, write_tiny_release

from perception.benchmark.gpu import main as gpu_main
from perception.benchmark.report import ratios, targets, write_doc_section
from perception.benchmark.speed import Row
from perception.data.synthetic.writer import write_dataset
from perception.errors import PerceptionError


def _row(variant: str, batch: int, ms: float) -> dict:
    return vars(Row(variant, "cuda", batch, ms, ms, round(batch / ms * 1e3, 1)))


def _gpu_report(rows: list[dict]) -> dict:
    machine = {"device": "GPU X", "cpu": "CPU Y", "cpu_count": 16, "isa": [], "torch": "2.x"}
    report = {"device_type": "cuda", "rows": rows, "machine": machine}
    report["ratios"] = ratios([Row(**r) for r in rows])
    return report


def test_gpu_targets_read_latency_throughput_and_training() -> None:
    rows = [
        _row("torch eager fp16", 1, 2.0),
        _row("torch compiled reduce-overhead fp16", 1, 1.2),
        _row("torch eager fp16", 32, 8.0),  # 4000 img/s
        _row("peer yolop torch eager fp32", 1, 10.0),
        _row("peer yolop torch eager fp16", 1, 4.0),
        _row("peer yolop torch eager fp16", 32, 16.0),  # 2000 img/s
        {**_row("train model-only bf16 channels_last", 32, 20.0), "images_per_s": 1000.0},
        {**_row("train end-to-end bf16 channels_last", 32, 40.0), "images_per_s": 600.0},
    ]
    report = _gpu_report(rows)
    assert report["ratios"]["torch_compiled_reduce_overhead_fp16_vs_eager"] == pytest.approx(1.67)
    assert report["ratios"]["ours_vs_peer_yolop_throughput_bs32"] == 2.0
    assert report["ratios"]["peer_yolop_vs_our_fastest_torch"] == pytest.approx(8.33)  # fp32
    assert report["ratios"]["peer_yolop_vs_ours_same_runtime_fp16"] == 2.0
    got = {name: (value, met) for name, value, met in targets(report)}
    assert got == {
        "bs1 fp16 latency <= 1.5 ms": ("1.20 ms", True),
        "bs32 throughput >= 3x the peer's": ("2.00x", False),
        "training end to end >= 70 % of model-only": ("60%", False),
    }
    # no peer in the run: the throughput target reads the published YOLOP figure
    alone = _gpu_report([r for r in rows if not r["variant"].startswith("peer")])
    name = "bs32 throughput >= 3x YOLOP's 1655 img/s (H100)"
    assert dict((n, v) for n, v, _ in targets(alone))[name] == "4000 img/s (2.42x)"


def test_cpu_targets_against_a_peer_prefer_the_alternating_rounds() -> None:
    rows = [
        {**_row("torch eager fp32", 1, 100.0), "device": "cpu"},
        {**_row("onnxruntime fp32", 1, 100.0), "device": "cpu"},
        {**_row("onnxruntime int8 qdq:all", 1, 60.0), "device": "cpu"},
        {**_row("peer yolop torch eager fp32", 1, 110.0), "device": "cpu"},
    ]
    report = {"device_type": "cpu", "rows": rows, "ratios": ratios([Row(**r) for r in rows])}
    got = {name: (value, met) for name, value, met in targets(report)}
    assert got["fastest runtime >= 2x yolop eager fp32"] == ("1.83x", False)
    assert got["torch eager fp32 no slower than yolop's (one block each)"] == (
        "yolop/ours 1.10",
        True,
    )
    report["ratios"]["peer_yolop_vs_ours_rounds"] = 0.96  # the rounds outvote one block
    got = {name: (value, met) for name, value, met in targets(report)}
    assert got["torch eager fp32 no slower than yolop's (median of alternating rounds)"] == (
        "yolop/ours 0.96",
        False,
    )
    assert not any("one block" in name for name in got if "yolop" in name)
    assert got["INT8 >= 2x onnxruntime fp32 (one block each)"] == ("1.67x", False)
    report["ratios"]["ort_int8_vs_ort_fp32_rounds"] = 2.1  # INT8 alternating with fp32
    got = {name: (value, met) for name, value, met in targets(report)}
    assert got["INT8 >= 2x onnxruntime fp32 (median of alternating rounds)"] == ("2.10x", True)


def test_doc_section_is_replaced_and_nothing_else_changes(tmp_path: Path) -> None:
    report = _gpu_report([_row("torch eager fp16", 1, 2.0)])
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## GPU\n\nold text\n\n## Later\n\nkept\n")
    write_doc_section(report, doc, "python tools/bench_gpu.py")  # appended: no markers yet
    first = doc.read_text()
    assert first.startswith("# Benchmarks\n\nintro\n\n## GPU\n\nold text\n\n## Later\n\nkept\n")
    assert "python tools/bench_gpu.py" in first and "| torch eager fp16 | cuda | 1 |" in first
    assert "machine: GPU X; CPU CPU Y, 16 logical CPUs" in first  # the GPU and its host
    section = first[first.index("<!--") :]
    doc.write_text("# Benchmarks\n\nintro\n\n" + section + "\n## Later\n\nkept\n")  # moved up
    report["rows"][0]["latency_ms"] = 1.0
    write_doc_section(report, doc, "python tools/bench_gpu.py --batch 64")
    second = doc.read_text()
    assert second.count("<!-- perception bench cuda: begin -->") == 1
    assert "--batch 64" in second and "latency <= 1.5 ms: 1.00 ms (met)" in second
    assert "2.00 ms" not in second  # the old section is gone
    assert second.endswith("\n## Later\n\nkept\n") and second.startswith("# Benchmarks\n\nintro")
    doc.write_text("<!-- perception bench cuda: begin -->\nhalf a section\n")
    with pytest.raises(PerceptionError, match="unpaired"):
        write_doc_section(report, doc, "x")
    assert doc.read_text() == "<!-- perception bench cuda: begin -->\nhalf a section\n"


def test_gpu_suite_runs_on_the_cpu_with_compile(tmp_path: Path) -> None:
    """The suite end to end on the CPU: renders its data, times eager and compiled rows,
    trains, scores and writes the JSON and the cpu section of the document."""
    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    doc, out, data = tmp_path / "benchmarks.md", tmp_path / "gpu.json", tmp_path / "data"
    doc.write_text("# Benchmarks\n")
    h, w = TINY_RELEASE_SIZE
    args = ["--weights", str(weights), "--device", "cpu", "--size", f"{h}x{w}", "--batch", "1",
            "--iters", "2", "--train-steps", "2", "--workers", "0", "--eval-images", "4",
            "--data", str(data), "--compile", "default", "--json", str(out),
            "--doc", str(doc)]  # fmt: skip
    assert gpu_main(args) == 0
    report = json.loads(out.read_text())
    rows = {(r["variant"], r["batch"]): r for r in report["rows"]}
    compiled = [v for v, b in rows if v.startswith("torch compiled default") and b == 1]
    assert len(compiled) == 1 and rows[(compiled[0], 1)]["images_per_s"] > 0
    assert rows[("torch eager fp32", 1)]["metrics"]["num_images"] == 4  # rendered, scored
    # every timed training step (2 warm-up + 2 timed, one spare) in one epoch of batch 1
    assert len((data / "manifest.jsonl").read_text().splitlines()) == 5
    assert any(v.startswith("train end-to-end") for v, _ in rows)
    assert any(k.startswith("torch_compiled_default_") for k in report["ratios"])
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n") and "<!-- perception bench cpu: end -->" in text
    assert "--compile default" in text and compiled[0] in text


def test_gpu_suite_without_a_gpu_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_main(["--device", "cuda", "--data", str(tmp_path / "d")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_write_dataset_is_not_repeated_when_the_data_exists(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", 2, seed=0, size=TINY_RELEASE_SIZE)
    before = sorted(p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file())
    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    h, w = TINY_RELEASE_SIZE
    args = ["--weights", str(weights), "--device", "cpu", "--size", f"{h}x{w}", "--batch", "1",
            "--iters", "1", "--train-steps", "1", "--workers", "0", "--eval-images", "2",
            "--data", str(data), "--json", str(tmp_path / "g.json"),
            "--compile", "none", "--doc", str(tmp_path / "b.md")]  # fmt: skip
    assert gpu_main(args) == 0
    assert sorted(p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()) == before


def test_evaluate_scores_torch_weights_in_bf16(tmp_path: Path) -> None:
    """What a bf16 bench row is scored with: the folded network in bf16, close to fp32."""
    from perception.evaluation.evaluate import evaluate

    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    data = write_dataset(tmp_path / "d", 3, seed=1, size=TINY_RELEASE_SIZE)
    fp32 = evaluate(weights, data, workers=0, device="cpu")
    bf16 = evaluate(weights, data, workers=0, device="cpu", precision="bf16")
    assert bf16["num_images"] == fp32["num_images"] == 3
    assert bf16["depth/abs_rel"] == pytest.approx(fp32["depth/abs_rel"], rel=0.05)
    assert bf16["lane/iou"] == pytest.approx(fp32["lane/iou"], abs=0.05)
    with pytest.raises(PerceptionError, match="precision 'int8'"):
        evaluate(weights, data, workers=0, device="cpu", precision="int8")
    with pytest.raises(PerceptionError, match="runs in its export's precision"):
        evaluate(tmp_path / "m.onnx", data, workers=0, device="cpu", precision="bf16")


def test_evaluate_at_another_size_scores_what_runs_there(tmp_path: Path) -> None:
    """Torch weights scored at a bench's --size match their ONNX export at that size."""
    from perception.checkpoints import load_model
    from perception.evaluation.evaluate import evaluate
    from perception.export import export_onnx

    weights = write_tiny_release(tmp_path / "tiny.safetensors")
    data = write_dataset(tmp_path / "d", 3, seed=2, size=TINY_RELEASE_SIZE)
    big = (96, 160)
    onnx = export_onnx(load_model(weights), tmp_path / "big.onnx", image_size=big)
    torch_m = evaluate(weights, data, workers=0, device="cpu", image_size=big)
    ort_m = evaluate(onnx, data, workers=0, device="cpu")
    native = evaluate(weights, data, workers=0, device="cpu")
    for key in ("depth/abs_rel", "lane/iou", "det/mAP50"):
        assert torch_m[key] == pytest.approx(ort_m[key], abs=1e-3), key
    assert native["depth/abs_rel"] != pytest.approx(torch_m["depth/abs_rel"], abs=1e-6)
    with pytest.raises(PerceptionError, match=r"exported at \(96, 160\), not \(64, 96\)"):
        evaluate(onnx, data, workers=0, device="cpu", image_size=(64, 96))


def test_cpu_training_target_says_what_loading_costs() -> None:
    rows = [
        {**_row("train model-only bf16 channels_last", 16, 1000.0), "device": "cpu"},
        {**_row("train end-to-end bf16 channels_last", 16, 1100.0), "device": "cpu"},
        {**_row("train loading only", 16, 80.0), "device": "cpu"},
    ]
    report = {"device_type": "cpu", "rows": rows, "ratios": ratios([Row(**r) for r in rows])}
    assert report["ratios"]["train_end_to_end_vs_model_only"] == pytest.approx(0.91, abs=0.01)
    assert report["ratios"]["train_loading_vs_model_only"] == pytest.approx(0.08, abs=0.001)
    got = {name: (value, met) for name, value, met in targets(report)}
    assert got["training end to end >= 90 % of model-only"] == (
        "91% (loading a batch in one process: 8% of a step)",
        True,
    )
    report["device_type"] = "cuda"  # on a GPU, against its own line
    got = {name: (value, met) for name, value, met in targets(report)}
    assert got["training end to end >= 70 % of model-only"] == (
        "91% (loading a batch in one process: 8% of a step)",
        True,
    )
