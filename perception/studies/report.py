"""What every study of ``perception compare`` writes: a JSON of its numbers (the doc's
tables are regenerated from it without retraining), a PNG, and a Markdown table.

A study module ``perception/studies/<name>.py`` has
``run(out: Path, budget: float = 1.0, seeds: Sequence[int] = (0, 1)) -> Result``: it
trains or measures every arm on the same data, budget and seeds, draws ``<name>.png``
under ``out`` and returns its ``Result``; ``save`` then writes ``<name>.json`` and
``<name>.md`` beside the plot.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    """One study's outcome.

    Attributes:
        study: its name (``shared``, ``gradients``, ...).
        columns: table columns, in order; ``rows`` are dicts over them (one per arm, the
            spread over seeds already folded in, e.g. ``"0.61 ± 0.02"`` or separate
            ``_mean`` / ``_std`` columns).
        rows: the table.
        plot: file name of the PNG under the output folder.
        setup: what every arm shared (image size, steps, seeds, data) for the doc.
        raw: per-arm, per-seed numbers and curves the table and plot came from.
    """

    study: str
    columns: list[str]
    rows: list[dict[str, Any]]
    plot: str
    setup: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) over seeds."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: Sequence[float]) -> str:
    """``"0.612 ± 0.020"`` over seeds (the table's format; ``raw`` keeps the numbers)."""
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def markdown_table(result: Result) -> str:
    """The table as Markdown, numbers to 3 significant decimals."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return (
                "nan"
                if math.isnan(value)
                else f"{value:.3g}"
                if abs(value) >= 1000
                else f"{value:.3f}"
            )
        return str(value)

    lines = ["| " + " | ".join(result.columns) + " |", "|" + "---|" * len(result.columns)]
    lines += [
        "| " + " | ".join(fmt(r.get(c, "")) for c in result.columns) + " |" for r in result.rows
    ]
    return "\n".join(lines) + "\n"


def save(result: Result, out: Path) -> Path:
    """Write ``<study>.json`` and ``<study>.md`` under ``out``; returns the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.study}.json"
    path.write_text(json.dumps(asdict(result), indent=1, default=float) + "\n")
    (out / f"{result.study}.md").write_text(markdown_table(result))
    return path


def load(path: Path) -> Result:
    """A saved study, to redraw tables without retraining."""
    return Result(**json.loads(Path(path).read_text()))
