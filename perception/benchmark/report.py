"""What a bench run says: the ratios BENCHMARKS.md asks for, the targets they meet or
miss, and the report as a Markdown table, JSON, or a section of a Markdown document.

The ratios and targets are computed from the rows of ONE run: on a shared or throttling
machine, two runs can differ by more than the effect being measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from perception.benchmark.speed import Row
from perception.errors import PerceptionError

ACCURACY_KEYS = ("det/mAP50", "det/mAP50_95", "lane/iou", "drivable/miou", "depth/abs_rel")
# The YOLOP architecture's bs32 fp16 throughput on one H100 (BENCHMARKS.md reference
# points); the GPU throughput target is 3x this when no peer was timed in the same run.
YOLOP_H100_BS32_IMG_S = 1655.0


def ratios(rows: list[Row]) -> dict[str, float]:
    """BENCHMARKS.md's ratios, at batch 1 unless the key names a batch."""
    by = {(r.variant, r.batch): r for r in rows}
    out = {}
    pairs = {  # latency of the second over the first: how much faster the first is
        "ort_fp32_vs_torch_fp32": ("onnxruntime fp32", "torch eager fp32"),
        "ort_fp16_vs_ort_fp32": ("onnxruntime fp16", "onnxruntime fp32"),
        "torch_bf16_vs_torch_fp32": ("torch eager bf16", "torch eager fp32"),
        "torch_fp16_vs_torch_fp32": ("torch eager fp16", "torch eager fp32"),
    }
    for r in rows:  # each compiled row against the eager row of its precision
        if r.variant.startswith("torch compiled ") and r.batch == 1:
            mode, precision = r.variant.split()[2:]
            key = f"torch_compiled_{mode.replace('-', '_')}_{precision}_vs_eager"
            pairs[key] = (r.variant, f"torch eager {precision}")
    for key, (fast, base) in pairs.items():
        if (fast, 1) in by and (base, 1) in by:
            out[key] = round(by[(base, 1)].latency_ms / by[(fast, 1)].latency_ms, 2)
    int8 = [r for r in rows if r.variant.startswith("onnxruntime int8") and r.batch == 1]
    if int8 and ("onnxruntime fp32", 1) in by:  # each setting, and the fastest one
        base = by[("onnxruntime fp32", 1)].latency_ms
        for r in int8:
            key = "ort_int8_" + r.variant.split()[-1].replace(":", "_") + "_vs_ort_fp32"
            out[key] = round(base / r.latency_ms, 2)
        out["ort_int8_vs_ort_fp32"] = round(base / min(r.latency_ms for r in int8), 2)
    slow_vs_fast = {  # latency of the first over the second: how much slower
        "predictor_torch_vs_model_only": ("predictor torch fp32", "torch eager fp32"),
        "predictor_ort_vs_model_only": ("predictor onnxruntime fp32", "onnxruntime fp32"),
        "predictor_torch_vs_predictor_ort": ("predictor torch fp32", "predictor onnxruntime fp32"),
    }
    for r in rows:  # the other torch precisions end to end, against onnxruntime's
        if r.variant.startswith("predictor torch ") and not r.variant.endswith(" fp32"):
            key = f"predictor_torch_{r.variant.split()[-1]}_vs_predictor_ort"
            slow_vs_fast[key] = (r.variant, "predictor onnxruntime fp32")
    for key, (slow, fast) in slow_vs_fast.items():
        if (slow, 1) in by and (fast, 1) in by:
            out[key] = round(by[(slow, 1)].latency_ms / by[(fast, 1)].latency_ms, 2)
    out.update(_peer_ratios(rows, by))
    out.update(_train_ratios(rows))
    return out


def round_ratios(
    alternating: dict[str, dict[str, dict[str, Any]]], int8: dict[str, Any] | None = None
) -> dict[str, float]:
    """``peer_<name>_vs_ours_rounds[_<precision>]``: the median peer-over-ours ratio;
    ``ort_int8_vs_ort_fp32_rounds``: the median fp32-over-INT8 ratio."""
    out = {
        f"peer_{name}_vs_ours_rounds{'' if precision == 'fp32' else '_' + precision}": r["median"]
        for name, by_precision in alternating.items()
        for precision, r in by_precision.items()
    }
    if int8:
        out["ort_int8_vs_ort_fp32_rounds"] = int8["median"]
    return out


def _peer_ratios(rows: list[Row], by: dict) -> dict[str, float]:
    """Each peer's latency over ours in the same runtime (``_<precision>`` for other than
    fp32); its eager fp32 latency over our fastest runtime and our fastest torch row; our
    best torch throughput over its best at the largest batch."""
    out = {}
    skip = ("peer ", "train ", "predictor ")
    ours = [r for r in rows if not r.variant.startswith(skip)]
    ours_1 = [r for r in ours if r.batch == 1]
    torch_1 = [r for r in ours_1 if r.variant.startswith("torch ")]
    big = max(r.batch for r in rows)
    for peer in (r for r in rows if r.variant.startswith("peer ") and r.batch == 1):
        _, name, runtime = peer.variant.split(" ", 2)  # runtime: "torch eager fp32", ...
        precision = runtime.split()[-1]
        suffix = "" if precision == "fp32" else f"_{precision}"
        same = by.get((runtime, 1))  # ours in the peer's runtime
        if same is not None:
            ratio = round(peer.latency_ms / same.latency_ms, 2)
            out[f"peer_{name}_vs_ours_same_runtime{suffix}"] = ratio
        if runtime != "torch eager fp32":
            continue
        for key, candidates in (("our_fastest", ours_1), ("our_fastest_torch", torch_1)):
            if candidates:
                fastest = min(r.latency_ms for r in candidates)
                out[f"peer_{name}_vs_{key}"] = round(peer.latency_ms / fastest, 2)
        theirs = _best_throughput(rows, big, f"peer {name} ")
        mine = _best_throughput(ours, big, "torch ")
        if big > 1 and theirs and mine:
            out[f"ours_vs_peer_{name}_throughput_bs{big}"] = round(mine / theirs, 2)
    return out


def _best_throughput(rows: list[Row], batch: int, prefix: str) -> float | None:
    """The highest images/s among the ``prefix`` rows at ``batch`` (None: no such row)."""
    speeds = [r.images_per_s for r in rows if r.batch == batch and r.variant.startswith(prefix)]
    return max(speeds, default=None)


def _train_ratios(rows: list[Row]) -> dict[str, float]:
    """End-to-end over model-only training throughput, the time to load a batch over a
    model-only step's (what end to end pays on top, where loading cannot overlap the step),
    and each layout/precision over fp32."""
    out = {}
    train = {r.variant.removeprefix("train "): r.images_per_s for r in rows if "train" in r.variant}
    for name, speed in train.items():  # end-to-end vs model-only of the same setting
        only = train.get(name.replace("end-to-end", "model-only"))
        if name.startswith("end-to-end") and only:
            out["train_end_to_end_vs_model_only"] = round(speed / only, 2)
            if "loading only" in train:  # what bounds it: loading a batch, in step times
                out["train_loading_vs_model_only"] = round(only / train["loading only"], 3)
    for fast in ("fp32 channels_last", "bf16 channels_last"):
        if f"model-only {fast}" in train and "model-only fp32" in train:
            key = f"train_{fast.replace(' ', '_')}_vs_fp32"
            out[key] = round(train[f"model-only {fast}"] / train["model-only fp32"], 2)
    return out


def targets(report: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """``(target, measured, met)`` for each BENCHMARKS.md target this report measured:
    the GPU ones on a GPU, the CPU ones otherwise."""
    r = report["ratios"]
    rows = [Row(**row) for row in report["rows"]]
    out = []
    if report.get("device_type") == "cuda":
        fp16 = [x.latency_ms for x in rows if x.batch == 1 and x.variant.startswith("torch ")
                and x.variant.endswith(" fp16")]  # fmt: skip
        if fp16:
            out.append(("bs1 fp16 latency <= 1.5 ms", f"{min(fp16):.2f} ms", min(fp16) <= 1.5))
        peer = next((k for k in r if k.startswith("ours_vs_peer_")), None)
        batch = max(x.batch for x in rows)
        mine = _best_throughput(rows, batch, "torch ")
        if peer is not None:
            out.append((f"bs{batch} throughput >= 3x the peer's", f"{r[peer]:.2f}x", r[peer] >= 3))
        elif mine and batch == 32:
            ratio = mine / YOLOP_H100_BS32_IMG_S
            name = f"bs32 throughput >= 3x YOLOP's {YOLOP_H100_BS32_IMG_S:.0f} img/s (H100)"
            out.append((name, f"{mine:.0f} img/s ({ratio:.2f}x)", ratio >= 3))
        if "train_end_to_end_vs_model_only" in r:
            value = r["train_end_to_end_vs_model_only"]
            measured = f"{value:.0%}{_loading_cost(r)}"
            out.append(("training end to end >= 70 % of model-only", measured, value >= 0.7))
        return out
    out += _peer_targets(r)
    if "ort_int8_vs_ort_fp32" in r:
        rounds = r.get("ort_int8_vs_ort_fp32_rounds")
        value = rounds if rounds is not None else r["ort_int8_vs_ort_fp32"]
        how = "median of alternating rounds" if rounds is not None else "one block each"
        out.append((f"INT8 >= 2x onnxruntime fp32 ({how})", f"{value:.2f}x", value >= 2))
    if "predictor_torch_vs_predictor_ort" in r:
        value = r["predictor_torch_vs_predictor_ort"]
        out.append(("Predictor torch within 1.5x of onnxruntime", f"{value:.2f}x", value <= 1.5))
    if "train_end_to_end_vs_model_only" in r:
        value = r["train_end_to_end_vs_model_only"]
        measured = f"{value:.0%}{_loading_cost(r)}"
        out.append(("training end to end >= 90 % of model-only", measured, value >= 0.9))
    return out


def _loading_cost(r: dict[str, float]) -> str:
    """What bounds end to end: loading one batch in one process, in model-only steps
    (workers divide it among themselves)."""
    if "train_loading_vs_model_only" not in r:
        return ""
    return f" (loading a batch in one process: {r['train_loading_vs_model_only']:.0%} of a step)"


def _peer_targets(r: dict[str, float]) -> list[tuple[str, str, bool]]:
    """CPU targets against each peer: our fastest runtime >= 2x its eager fp32, and our
    eager fp32 no slower than its own (from the alternating rounds when there were any)."""
    out = []
    for key in [k for k in r if k.endswith("_vs_our_fastest")]:
        name = key.removeprefix("peer_").removesuffix("_vs_our_fastest")
        fastest = r[key]
        out.append((f"fastest runtime >= 2x {name} eager fp32", f"{fastest:.2f}x", fastest >= 2))
        rounds = r.get(f"peer_{name}_vs_ours_rounds")
        same = rounds if rounds is not None else r.get(f"peer_{name}_vs_ours_same_runtime")
        if same is not None:
            how = "median of alternating rounds" if rounds is not None else "one block each"
            target = f"torch eager fp32 no slower than {name}'s ({how})"
            out.append((target, f"{name}/ours {same:.2f}", same >= 1))
    return out


def _rounds_line(label: str, ratios: list[float], median: float) -> str:
    """``- <label> per round a, b, ...; median m``: one line of alternating rounds."""
    return f"- {label} per round {', '.join(f'{x:.2f}' for x in ratios)}; median {median:.2f}"


def _int8_rounds_text(r: dict[str, Any] | None) -> str:
    if not r:
        return ""
    line = _rounds_line(f"int8 {r['setting']}: fp32/int8", r["fp32_over_int8"], r["median"])
    return "\n\nalternating rounds, onnxruntime, batch 1:\n" + line


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: the machine, a table of rows, costs, ratios and targets."""
    keys = [k for k in ACCURACY_KEYS if any(k in r["metrics"] for r in report["rows"])]
    head = ["variant", "device", "batch", "latency ms (median)", "p90 ms", "img/s", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        acc = [f"{r['metrics'][k]:.3f}" if k in r["metrics"] else "" for k in keys]
        speed = [f"{r['latency_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['images_per_s']:.1f}"]
        cells = [r["variant"], r["device"], str(r["batch"]), *speed, *acc]
        lines.append("| " + " | ".join(cells) + " |")
    costs = "; ".join(
        f"{name} {c['params'] / 1e6:.2f} M params, {c['gflops']:.2f} GFLOPs"
        for name, c in report.get("cost", {}).items()
    )
    ratio_text = ", ".join(f"{k} {v:.2f}x" for k, v in report["ratios"].items())
    machine = report["machine"]
    cpu = machine.get("cpu") or machine["device"]  # a GPU run: the GPU, then the host CPU
    where = machine["device"] if machine["device"] == cpu else f"{machine['device']}; CPU {cpu}"
    lines.insert(
        0,
        f"machine: {where}"
        f"{' (' + machine['cpu_family_model'] + ')' if machine.get('cpu_family_model') else ''}"
        f", {machine['cpu_count']} logical CPUs"
        f"{', ' + ' '.join(machine['isa']) if machine.get('isa') else ''}\n",
    )
    goals = [
        f"- {name}: {value} ({'met' if ok else 'NOT met'})" for name, value, ok in targets(report)
    ]
    rounds = [
        _rounds_line(f"{name} {precision}: {name}/ours", r["peer_over_ours"], r["median"])
        for name, by_precision in report.get("peer_rounds", {}).items()
        for precision, r in by_precision.items()
    ]
    return (
        "\n".join(lines)
        + (f"\n\ncost: {costs}" if costs else "")
        + (f"\nratios: {ratio_text}" if ratio_text else "")
        + ("\n\nalternating rounds, eager, batch 1:\n" + "\n".join(rounds) if rounds else "")
        + _int8_rounds_text(report.get("int8_rounds"))
        + ("\n\ntargets:\n" + "\n".join(goals) if goals else "")
    )


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def write_doc_section(report: dict[str, Any], path: str | os.PathLike, command: str) -> Path:
    """Put the report into the Markdown file ``path`` between two markers named after the
    device type, replacing that section if it is there (appending it if not) and leaving
    every other line as it was; written to a temporary file first, then renamed."""
    path = Path(path)
    kind = report.get("device_type", "cpu")
    begin, end = (
        f"<!-- perception bench {kind}: begin -->",
        f"<!-- perception bench {kind}: end -->",
    )
    machine = report["machine"]
    libs = [lib for lib in ("torch", "onnxruntime") if machine.get(lib)]
    versions = ", ".join(f"{lib} {machine[lib]}" for lib in libs)
    section = "\n".join(
        [
            begin,
            f"Measured on {machine['device']} ({versions}) with:",
            "",
            "```bash",
            command,
            "```",
            "",
            format_report(report),
            end,
        ]
    )
    text = path.read_text() if path.exists() else ""
    if (begin in text) != (end in text) or text.count(begin) > 1:
        raise PerceptionError(f"{path}: unpaired '{begin}' / '{end}' markers; fix them by hand")
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
