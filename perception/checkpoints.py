"""Save and load models: Lightning ``.ckpt`` and released ``.safetensors``.

Neither path unpickles arbitrary objects: checkpoints are read with
``torch.load(weights_only=True)`` (the module's hyperparameters are primitives for this
reason) and releases are safetensors whose metadata holds, as JSON, everything needed to
rebuild and run the model — so a consumer needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from perception.errors import PerceptionError
from perception.models import ModelConfig, MultiTaskModel, build_model

FORMAT_VERSION = 1


@dataclass
class ModelMeta:
    """What travels with the weights: architecture, classes, input size, version."""

    config: dict
    class_names: list[str]
    image_size: tuple[int, int]
    version: str = ""
    format: int = FORMAT_VERSION


@dataclass
class LoadedModel:
    model: MultiTaskModel
    meta: ModelMeta


def _config(values: dict, strict: bool) -> ModelConfig:
    """ModelConfig from checkpoint hparams (which hold training keys too, so not strict)
    or from release metadata (strict: an unknown key means a file we cannot rebuild)."""
    if not strict:
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        values = {k: v for k, v in values.items() if k in names}
    config = ModelConfig.from_dict(values)
    return dataclasses.replace(config, pretrained=False)  # weights come from the file


def _from_ckpt(path: Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
        warnings.simplefilter("ignore")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = dict(ckpt.get("hyper_parameters") or {})
    if "class_names" not in hp:
        raise PerceptionError(f"{path}: not a perception checkpoint (no class_names hparam)")
    state = ckpt["state_dict"]
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else "model."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    # older checkpoints: flat hparams and a camera-blind depth head
    values = hp["net"] if isinstance(hp.get("net"), dict) else {"canonical_focal": 0.0, **hp}
    config = dataclasses.asdict(_config({**values, "num_classes": len(hp["class_names"])}, False))
    meta = ModelMeta(config, list(hp["class_names"]), tuple(hp.get("image_size", (384, 640))))
    return weights, meta


def _from_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("perception")
    if raw is None:
        raise PerceptionError(f"{path}: no 'perception' metadata; not a perception release")
    meta = json.loads(raw)
    meta["image_size"] = tuple(meta["image_size"])
    meta["config"].setdefault("canonical_focal", 0.0)  # releases before it were camera-blind
    return load_file(str(path)), ModelMeta(**meta)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from a ``.ckpt`` (EMA weights when present) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise PerceptionError(f"{path}: weights file not found")
    readers = {".ckpt": _from_ckpt, ".safetensors": _from_safetensors}
    if path.suffix not in readers:
        raise PerceptionError(f"{path}: expected a .ckpt or .safetensors file")
    try:
        weights, meta = readers[path.suffix](path)
        config = _config(meta.config, strict=True)
    except PerceptionError:
        raise
    except Exception as err:  # truncated, empty, foreign or pickled-code files alike
        raise PerceptionError(f"{path}: cannot read weights ({_reason(err)})") from None
    meta.config = dataclasses.asdict(config)  # every field, defaults filled in
    model = build_model(config)
    _check_fits(path, model.state_dict(), weights)
    model.load_state_dict(weights)
    return LoadedModel(model.eval().to(device), meta)


def _reason(err: Exception) -> str:
    """The first line of a reader's error; torch's refusal to unpickle code, said plainly."""
    text = str(err).strip()
    if "Weights only load failed" in text:  # torch's safe unpickler refused an instruction
        why = [line for line in text.splitlines() if "nsupported" in line]  # torch's wording
        why = why[0].split("WeightsUnpickler error:")[-1].strip().split(". ")[0] if why else ""
        return (
            "refused by the tensors-only loader: corrupt, or pickled objects that could run "
            f"code ({why.rstrip('.') or 'unsupported content'})"
        )
    if isinstance(err, EOFError):
        return "empty or truncated file"
    first = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
    if type(err).__name__ == "SafetensorError":
        return f"not a complete safetensors file: {first}"
    return first[:200]


def _check_fits(path: Path, ours: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]):
    """One error naming the tensors that the metadata's architecture does not have, lacks,
    or has in another shape (a file whose metadata was edited, or weights from elsewhere)."""
    missing = [k for k in ours if k not in weights]
    unexpected = [k for k in weights if k not in ours]
    shapes = [
        f"{k} {tuple(weights[k].shape)} in the file, {tuple(v.shape)} here"
        for k, v in ours.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {len(keys)}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if keys
        ]
        raise PerceptionError(
            f"{path}: weights do not fit the architecture in its metadata ({'; '.join(parts)})"
        )


# fields that may differ between a model and the file it starts from: the class list
# (its head is re-initialised), where pretrained weights came from, the default camera,
# and where the dense decoders refine (same tensors, run at another resolution)
_FINE_TUNABLE = {"num_classes", "pretrained", "default_hfov", "dense_refine_stride"}


def init_from(model: MultiTaskModel, config: ModelConfig, path: str | os.PathLike) -> list[str]:
    """Start ``model`` (built from ``config``) from the weights of a release or checkpoint.

    This is fine-tuning: a release trained at one input size or on one dataset continues
    at another. The architecture must be the same (a different width or backbone is an
    error naming the fields); with a different class list the tensors whose shape changed
    keep their fresh init. Returns the names of those tensors.
    """
    loaded = load_model(path)
    ours, theirs = dataclasses.asdict(config), loaded.meta.config
    differ = [k for k in ours if k not in _FINE_TUNABLE and ours[k] != theirs.get(k)]
    if differ:
        pairs = ", ".join(f"{k}: {theirs.get(k)!r} in the file, {ours[k]!r} here" for k in differ)
        raise PerceptionError(f"{path}: cannot start from these weights ({pairs})")
    source = loaded.model.state_dict()
    state = model.state_dict()
    fresh = [k for k, v in state.items() if source[k].shape != v.shape]
    model.load_state_dict({k: source[k] for k in state if k not in fresh}, strict=False)
    return fresh


def save_release(model: MultiTaskModel, meta: ModelMeta, path: str | os.PathLike) -> Path:
    """Write weights + metadata as one ``.safetensors`` file (fp32 unless already cast)."""
    from safetensors.torch import save_file

    from perception import __version__

    meta = dataclasses.replace(meta, version=meta.version or __version__)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")  # a killed write never leaves a torn file
    save_file(state, str(tmp), metadata={"perception": json.dumps(dataclasses.asdict(meta))})
    os.replace(tmp, path)
    return path
