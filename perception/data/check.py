"""``perception check-data``: validate a v1 dataset and report *every* problem.

The training loader skips a bad sample and goes on; this checker is the opposite tool: it
reads every line and every file so a user can fix the whole dataset in one pass. Each
problem is one line naming the manifest line, the sample id and what is wrong.

Only the format primitives of ``perception.data.formats.v1`` are used, so the checker and
the loader can never disagree about what a valid file is.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from perception.data.formats import v1
from perception.errors import PerceptionError

_MAX_VALUES_SHOWN = 12  # a mask saved as a photo has ~256 values; show a readable subset


@dataclass
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        where: ``"manifest.jsonl:12"`` for a sample, or a file relative to the root
            (``"dataset.yaml"``, ``"manifest.jsonl"``) for a dataset-level problem.
        sample_id: the manifest id when it is known, else ``None``.
        message: what is wrong, naming the file or key concerned.
    """

    where: str
    sample_id: str | None
    message: str

    def __str__(self) -> str:
        tag = f" [{self.sample_id}]" if self.sample_id is not None else ""
        return f"{self.where}{tag}: {self.message}"


@dataclass(frozen=True)
class _Entry:
    """One non-blank manifest line: its problems found so far and, if it parsed, its record."""

    where: str
    sample_id: str | None
    problems: list[str]
    record: v1.Record | None


def check_dataset(root: str | os.PathLike, workers: int | None = None) -> tuple[list[Problem], int]:
    """Every problem in the dataset at ``root`` (in manifest order) and the samples checked.

    Raises ``PerceptionError`` only when ``root`` does not exist (nothing to report on);
    everything else, including a missing ``dataset.yaml`` or ``manifest.jsonl``, is a
    ``Problem`` so the user sees all of them at once. ``workers`` is the number of file
    reading threads (default: ``ThreadPoolExecutor``'s).
    """
    root = Path(root)
    if not root.exists():
        raise PerceptionError(f"{root}: no such dataset directory")
    if not root.is_dir():
        return [Problem(str(root), None, "not a directory (expected a dataset root)")], 0
    problems: list[Problem] = []
    classes = _read_classes(root, problems)
    entries = _read_entries(root, problems)
    if entries is None:
        return problems, 0
    if not entries:
        problems.append(Problem(v1.MANIFEST_FILE, None, "no samples (the manifest is empty)"))
    _flag_duplicate_ids(entries)
    problems += _check_entries(root, classes, entries, workers)
    return problems, len(entries)


def _check_entries(
    root: Path, classes: list[str] | None, entries: list[_Entry], workers: int | None
) -> list[Problem]:
    """Check every entry's files on a thread pool (cv2 decodes without the GIL).

    ``pool.map`` yields in submission order, so the report follows the manifest.
    """
    problems: list[Problem] = []
    with _quiet_opencv(), ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda entry: _check_entry(root, classes, entry), entries)
        bar = tqdm(
            results,
            total=len(entries),
            desc="check-data",
            unit="sample",
            disable=None,
            file=sys.stderr,
            leave=False,
        )
        for entry, messages in zip(entries, bar, strict=True):
            problems.extend(Problem(entry.where, entry.sample_id, m) for m in messages)
    return problems


def print_report(problems: list[Problem], num_samples: int) -> None:
    """One line per problem on stdout, then a summary line (grep-able, diff-able)."""
    for problem in problems:
        print(problem)
    summary = f"checked {num_samples} {_plural(num_samples, 'sample')}: "
    summary += f"{len(problems)} {_plural(len(problems), 'problem')}"
    bad = {p.where for p in problems if p.where.startswith(f"{v1.MANIFEST_FILE}:")}
    if bad:
        summary += f" in {len(bad)} {_plural(len(bad), 'sample')}"
    print(summary)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _relative_message(err: Exception, path: Path, relative: str) -> str:
    """The error text with the absolute ``path`` replaced by what the user wrote."""
    return str(err).replace(str(path), relative)


def _read_classes(root: Path, problems: list[Problem]) -> list[str] | None:
    """Class names from ``dataset.yaml``, or ``None`` (and a problem) when it is unusable."""
    try:
        return v1.read_info(root).classes
    except v1.DatasetFormatError as err:
        message = _relative_message(err, root / v1.INFO_FILE, v1.INFO_FILE)
        message = " ".join(message.split())  # YAML parser errors span several lines
        problems.append(Problem(v1.INFO_FILE, None, message.removeprefix(f"{v1.INFO_FILE}: ")))
    except OSError as err:
        problems.append(Problem(v1.INFO_FILE, None, f"cannot be read ({err.strerror})"))
    return None


def _read_entries(root: Path, problems: list[Problem]) -> list[_Entry] | None:
    """Parse ``manifest.jsonl`` line by line, so one bad line never hides the others.

    Returns ``None`` (and adds a problem) when the manifest itself cannot be read.
    """
    path = root / v1.MANIFEST_FILE
    if not path.is_file():
        problems.append(
            Problem(v1.MANIFEST_FILE, None, "missing (every v1 dataset has a manifest.jsonl)")
        )
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        problems.append(Problem(v1.MANIFEST_FILE, None, f"cannot be read ({err.strerror})"))
        return None
    entries = []
    for n, raw_line in enumerate(data.splitlines(), start=1):
        if raw_line.strip():
            entries.append(_parse_line(raw_line, n))
    return entries


def _parse_line(raw_line: bytes, n: int) -> _Entry:
    """One manifest line -> an entry holding either a record or the reason it has none."""
    where = f"{v1.MANIFEST_FILE}:{n}"
    try:
        raw = json.loads(raw_line.decode("utf-8"))
    except UnicodeDecodeError:
        return _Entry(where, None, ["not valid UTF-8 text"], None)
    except json.JSONDecodeError as err:
        return _Entry(where, None, [f"not valid JSON ({err.msg} at column {err.colno})"], None)
    sample_id = str(raw["id"]) if isinstance(raw, dict) and "id" in raw else None
    try:
        record = v1.parse_record(raw, n)
    except v1.DatasetFormatError as err:
        return _Entry(where, sample_id, [str(err).removeprefix(f"{where}: ")], None)
    return _Entry(where, record.id, [], record)


def _flag_duplicate_ids(entries: list[_Entry]) -> None:
    """Every repeat of an id is a problem on its own line (the first use is fine)."""
    first_line: dict[str, int] = {}
    for entry in entries:
        if entry.record is None:
            continue
        rec = entry.record
        if rec.id in first_line:
            entry.problems.append(
                f"duplicate id {rec.id!r} (first used on line {first_line[rec.id]})"
            )
        else:
            first_line[rec.id] = rec.line


def _check_entry(root: Path, classes: list[str] | None, entry: _Entry) -> list[str]:
    """All problem messages of one line: parse/duplicate ones, then labels, then files."""
    if entry.record is None:
        return list(entry.problems)
    rec = entry.record
    return [
        *entry.problems,
        *_check_fields(rec, classes),
        *_check_files(root, rec),
    ]


def _check_fields(rec: v1.Record, classes: list[str] | None) -> list[str]:
    """Problems visible in the manifest line alone: size, boxes, ignore, labels, camera."""
    out = []
    if rec.boxes is not None:
        out += [reason for _, reason in v1.box_problems(rec.boxes, rec.width, rec.height, 0)]
    if rec.ignore:  # same strictness: a region off the image hides a wrong frame or scale
        found = v1.box_problems(rec.ignore, rec.width, rec.height, 0, what="ignore box")
        out += [reason for _, reason in found]
    if rec.labels is not None and classes is not None:
        unknown: dict[str, list[int]] = {}
        for i, label in enumerate(rec.labels):
            if label not in classes:
                unknown.setdefault(label, []).append(i)
        for label, idx in unknown.items():
            which = ("box " if len(idx) == 1 else "boxes ") + ", ".join(map(str, idx))
            out.append(
                f"label {label!r} ({which}) is not in dataset.yaml classes [{', '.join(classes)}]"
            )
    cam = rec.camera
    if cam is not None and not (cam.fx > 0 and cam.fy > 0):
        out.append(f"camera fx={cam.fx}, fy={cam.fy}; focal lengths must be positive")
    return out


def _check_files(root: Path, rec: v1.Record) -> list[str]:
    """Problems found by reading the image and label files of one record."""
    out: list[str] = []
    image = _load(root, rec.image, "image", v1.read_image, out)
    size = (rec.height, rec.width)
    if image is not None:
        h, w = image.shape[:2]
        if (h, w) != size:
            out.append(
                f"{rec.image} is {w}x{h} (WxH) but the manifest says "
                f"width={rec.width}, height={rec.height}"
            )
        size = (h, w)
    for task in v1.MASK_TASKS:
        relative = getattr(rec, task)
        mask = _load(root, relative, task, v1.read_mask, out)
        if mask is not None:
            out += _size_problem(relative, mask, size)
            out += _mask_value_problem(relative, mask)
    depth = _load(root, rec.depth, "depth", v1.read_depth, out)
    if depth is not None:
        out += _size_problem(rec.depth, depth, size)
    return out


def _load(
    root: Path,
    relative: str | None,
    key: str,
    reader: Callable[[Path], np.ndarray],
    out: list[str],
) -> np.ndarray | None:
    """``reader(ROOT/relative)``, or ``None`` with the reason appended to ``out``.

    ``None`` without a problem when ``relative`` is ``None`` (task not labeled).
    """
    if relative is None:
        return None
    try:
        path = v1.resolve(root, relative)
    except v1.DatasetFormatError as err:
        out.append(f"{key!r} path {err}")
        return None
    try:
        return reader(path)
    except v1.DatasetFormatError as err:
        out.append(_relative_message(err, path, relative))
    except (OSError, cv2.error) as err:
        out.append(f"{relative}: cannot be read ({getattr(err, 'strerror', None) or err})")
    return None


def _size_problem(relative: str, array: np.ndarray, size: tuple[int, int]) -> list[str]:
    """A label map must cover the image pixel for pixel."""
    h, w = array.shape[:2]
    if (h, w) == size:
        return []
    return [f"{relative} is {w}x{h} (WxH) but the image is {size[1]}x{size[0]}"]


def _mask_value_problem(relative: str, mask: np.ndarray) -> list[str]:
    """Lane/drivable PNGs hold only 0 (background), 1 (foreground) and 255 (ignore)."""
    if v1.mask_values_ok(mask):
        return []
    values = v1.mask_values(mask)
    shown = ", ".join(str(v) for v in values[:_MAX_VALUES_SHOWN])
    if len(values) > _MAX_VALUES_SHOWN:
        shown += f", ... ({len(values)} distinct)"
    allowed = ", ".join(map(str, v1.MASK_VALUES))
    return [f"{relative} has values {{{shown}}}; allowed {allowed}"]


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's per-file decoder warnings; the report already names bad files."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)
