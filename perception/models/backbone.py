"""The shared encoder: any timm CNN through its ``features_only`` contract.

Channels, strides and the input normalisation are read from timm (``feature_info`` and
``pretrained_cfg``), never typed in (ARCHITECTURE rule 7), so swapping the backbone name
is the whole change.

Weights (``pretrained``):
- ``False``: random init; never touches the network.
- ``str``: a local timm checkpoint of the *full* classification model (``.safetensors`` or
  a plain ``state_dict`` file; loaded with ``weights_only=True``, never unpickling code).
- ``True``: timm's default weights from the Hugging Face hub (needs network).

timm is imported lazily: unless hub weights are asked for, ``HF_HUB_OFFLINE=1`` is set
(only if the user left it unset) *before* the first import, so an offline machine can
never hang on a download. huggingface_hub reads the variable once, at import; a process
that needs hub weights later should set ``HF_HUB_OFFLINE=0`` itself.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from perception.errors import PerceptionError
from perception.models.plain import PlainBackbone, is_plain

# Four levels, finest first; the neck and heads rely on exactly these reductions.
OUT_INDICES: tuple[int, ...] = (-4, -3, -2, -1)
EXPECTED_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


def _import_timm(hub: bool) -> ModuleType:
    """Import timm; offline by default so random init or local weights never hit the network."""
    if not hub:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    return timm


def _check_name(timm: ModuleType, name: str) -> None:
    """Raise ``PerceptionError`` with close timm names when ``name`` is not a timm model."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name.lower(), timm.list_models(), n=5, cutoff=0.6)
    hint = f"close timm names: {', '.join(close)}" if close else "see timm.list_models()"
    raise PerceptionError(f"unknown backbone {name!r}; {hint}")


def _weights_kwargs(name: str, pretrained: bool | str) -> dict[str, object]:
    """timm ``create_model`` kwargs for the requested weights source."""
    if pretrained is True:
        return {"pretrained": True}
    if pretrained is False or pretrained == "":
        return {"pretrained": False}
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise PerceptionError(f"pretrained weights file not found: {path} (backbone {name})")
    # 'source' cleared so a hub-sourced cfg cannot take priority over the local file.
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path), "source": ""}}


def _source_text(pretrained: bool | str) -> str:
    """Where the weights were asked from, for error messages."""
    if pretrained is True:
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        return "the Hugging Face hub" + (" (HF_HUB_OFFLINE is set)" if offline else "")
    return str(pretrained)


class _KeyReport(logging.Handler):
    """Collects the checkpoint keys timm could not match (it only logs them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        for prefix, keys in (
            ("Missing keys (", self.missing),
            ("Unexpected keys (", self.unexpected),
        ):
            if msg.startswith(prefix):
                keys.extend(msg[len(prefix) : msg.index(")")].split(", "))


@contextmanager
def _key_report() -> Iterator[_KeyReport]:
    """Listen to timm's pretrained-loading log for the duration of the block."""
    logger, report = logging.getLogger("timm.models._builder"), _KeyReport()
    level = logger.level
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    try:
        yield report
    finally:
        logger.removeHandler(report)
        logger.setLevel(level)


def _check_keys(timm: ModuleType, name: str, source: str, report: _KeyReport) -> None:
    """Raise if a weights file only *partly* fits the architecture.

    With ``features_only`` timm drops the classifier and loads non-strictly, so a file for
    a sibling architecture (resnet34 into resnet18 or back) would load partly, silently.
    Legitimate gaps are the classifier (missing) and full-model layers that the feature
    extractor omits (unexpected); both are read from a weightless (meta) full model.
    """
    if not (report.missing or report.unexpected):
        return
    with torch.device("meta"):
        full = timm.create_model(name)
        all_keys = set(full.state_dict())
        full.reset_classifier(0)
        body_keys = set(full.state_dict())
    problems = [
        f"{len(keys)} {what} keys, e.g. {keys[0]}"
        for what, keys in (
            ("missing", [k for k in report.missing if k in body_keys]),
            ("unexpected", [k for k in report.unexpected if k not in all_keys]),
        )
        if keys
    ]
    if problems:
        raise PerceptionError(f"{source} does not match backbone {name!r}: {'; '.join(problems)}")


def create_features(name: str, pretrained: bool | str = False) -> nn.Module:
    """A timm ``features_only`` model returning 4 maps, or a one-line ``PerceptionError``."""
    timm = _import_timm(hub=pretrained is True)
    _check_name(timm, name)
    kwargs = _weights_kwargs(name, pretrained)
    try:
        with _key_report() as report:
            model = timm.create_model(name, features_only=True, out_indices=OUT_INDICES, **kwargs)
    except Exception as err:  # any failure here is "this backbone/weights can't be had"
        first = " ".join(str(err).split())[:300] or type(err).__name__  # one line
        if kwargs["pretrained"]:
            where = _source_text(pretrained)
            raise PerceptionError(
                f"cannot load pretrained weights for backbone {name!r} from {where}: {first}"
            ) from err
        raise PerceptionError(
            f"backbone {name!r} cannot be built as a 4-level CNN feature extractor: {first}"
        ) from err
    _check_keys(timm, name, _source_text(pretrained), report)
    return model


class Backbone(nn.Module):
    """timm CNN feature extractor: ``[B, 3, H, W]`` normalised image -> 4 maps, strides 4..32.

    Attributes:
        model_name: the timm name (with optional ``.tag``).
        out_channels: channels of each returned map, finest first (from ``feature_info``).
        strides: reduction of each map in input pixels, ``[4, 8, 16, 32]``.
        mean, std: per-channel RGB normalisation of the pretrained weights, for inputs in
            ``[0, 1]`` (from timm's ``pretrained_cfg``; ImageNet's for most models).
    """

    def __init__(self, name: str, *, pretrained: bool | str = False) -> None:
        super().__init__()
        self.model_name = name
        self.body = create_features(name, pretrained)
        info = self.body.feature_info
        self.out_channels: list[int] = [int(c) for c in info.channels()]
        self.strides: list[int] = [int(s) for s in info.reduction()]
        if tuple(self.strides) != EXPECTED_STRIDES:
            raise PerceptionError(
                f"backbone {name!r} gives feature strides {self.strides}; "
                f"need {list(EXPECTED_STRIDES)} (use a CNN backbone)"
            )
        cfg = self.body.pretrained_cfg
        self.mean: tuple[float, ...] = tuple(float(v) for v in cfg.get("mean", ()))
        self.std: tuple[float, ...] = tuple(float(v) for v in cfg.get("std", ()))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise PerceptionError(f"backbone {name!r} has no RGB mean/std in its timm config")

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> maps ``[B, out_channels[i], H/strides[i], W/strides[i]]``."""
        return list(self.body(x))


def build_backbone(
    name: str, *, pretrained: bool | str = False, act: str = "relu", norm: str = "batch"
) -> nn.Module:
    """The backbone a ``ModelConfig.backbone`` names: a timm CNN (``Backbone``), or a plain
    conv stack for ``plain:<depth>x<width>`` (``models.plain``; the only kind that uses
    ``act`` and ``norm``, a timm model keeping its own layers)."""
    if is_plain(name):
        return PlainBackbone(name, pretrained=pretrained, act=act, norm=norm)
    return Backbone(name, pretrained=pretrained)
