"""Per-stage gradient norms of the backbone: does the signal reach the lower layers?

A multi-task loss back-propagates through the neck into every backbone stage; when the
lower stages get gradients orders of magnitude smaller than the higher ones they barely
train (too much weight decay, a too-low LR, a saturating activation). ``GradientNorms``
measures that after each backward and before the optimizer step, so the numbers are the
gradients the optimizer is about to use (unscaled under fp16; before gradient clipping,
which Lightning applies after this hook).

Stages, lower to higher: **stage 0 is the stem** (everything that runs before the first
returned feature map: for resnet18 ``conv1``/``bn1``), stages 1-4 are the modules that
produce the 4 feature maps (strides 4, 8, 16, 32; resnet18 ``layer1``..``layer4``), so
``grad/stage{i}`` matches "stage i" of ``analysis.features``. A module between two
returned maps (efficientnet's ``blocks.3``) belongs to the stage of the next map.

Usable from YAML::

    trainer:
      callbacks:
        - class_path: perception.training.gradients.GradientNorms
          init_args: {every_n_steps: 50}
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning as L
import torch
from torch import nn

from perception.errors import PerceptionError


def backbone_stages(body: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """``[(name, params)]`` of a timm ``features_only`` model: the stem, then one per map.

    The feature modules come from timm's ``return_layers`` (``FeatureListNet``, whose
    children are the flattened top-level modules) or ``feature_info.module_name()``
    (models with their own feature class). Parameters are walked in registration order,
    which is execution order for timm's sequential CNNs. A stage without parameters would
    make the diagnostic meaningless, so it is an error; a stem without any is left out.
    """
    return_layers = getattr(body, "return_layers", None)
    feature_names = list(return_layers) if return_layers else body.feature_info.module_name()
    groups: list[list[nn.Parameter]] = [[] for _ in range(len(feature_names) + 1)]
    done = 0  # feature modules already passed, in registration order
    for name, param in body.named_parameters():
        owner = next(
            (i for i, f in enumerate(feature_names) if name == f or name.startswith(f + ".")),
            None,
        )
        if owner is not None:
            done = owner + 1
            groups[done].append(param)
        elif done < len(feature_names):  # runs before feature map `done`: part of its stage
            groups[done].append(param)  # (done = 0: the stem)
        # after the last returned map: feeds no feature map, so it gets no gradient
    empty = [f for f, params in zip(feature_names, groups[1:], strict=True) if not params]
    if empty:
        raise PerceptionError(f"cannot find the parameters of backbone stages {empty}")
    shown = body.feature_info.module_name()  # dotted names ("stages.0", not "stages_0")
    named = [("stem", groups[0]), *zip(shown, groups[1:], strict=True)]
    return [(n, p) for n, p in named if p]


@torch.no_grad()
def gradient_norm(params: list[nn.Parameter]) -> float:
    """L2 norm of all gradients of ``params`` together (0 when none has a gradient)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]  # [] each
    return float(torch.stack(norms).norm()) if norms else 0.0


class GradientNorms(L.Callback):
    """Log ``grad/stage{i}`` (L2 norm of stage ``i``'s gradients) every ``every_n_steps``.

    Attributes:
        stage_names: the stages, lower to higher (``stem``, then timm's module names).
        history: ``{global_step: [norm per stage]}`` of every logged step, in memory.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise PerceptionError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.stage_names: list[str] = []
        self.keys: list[str] = []
        self.history: dict[int, list[float]] = {}
        self._stages: list[list[nn.Parameter]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Find the stages once the module exists (the model is the module's ``model``)."""
        model = getattr(pl_module, "model", None)
        backbone = getattr(model, "backbone", None)
        if backbone is None or not hasattr(backbone, "body"):
            raise PerceptionError("GradientNorms needs a module whose model has a timm backbone")
        stages = backbone_stages(backbone.body)
        self.stage_names = [name for name, _ in stages]
        self._stages = [params for _, params in stages]
        first = 0 if self.stage_names[0] == "stem" else 1  # stage numbers as documented
        self.keys = [f"grad/stage{first + i}" for i in range(len(stages))]

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        norms = [gradient_norm(params) for params in self._stages]
        self.history[step] = norms
        pl_module.log_dict(
            dict(zip(self.keys, norms, strict=True)), on_step=True, on_epoch=False, batch_size=1
        )

    def plot(self, path: str | os.PathLike) -> Path:
        """Norm (log scale) against stage, one line per logged step, coloured by step."""
        if not self.history:
            raise PerceptionError("no gradient norms recorded yet (fit first)")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = sorted(self.history)
        cmap = plt.get_cmap("viridis")
        colors = plt.Normalize(vmin=steps[0], vmax=max(steps[-1], steps[0] + 1))
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        x = range(len(self.stage_names))
        for step in steps:  # a stage without gradient (0) cannot sit on a log axis
            norms = [v if v > 0 and math.isfinite(v) else math.nan for v in self.history[step]]
            ax.plot(x, norms, marker="o", color=cmap(colors(step)), alpha=0.8)
        fig.colorbar(plt.cm.ScalarMappable(norm=colors, cmap=cmap), ax=ax, label="step")
        labels = [
            f"{key.removeprefix('grad/')}\n{name}"
            for key, name in zip(self.keys, self.stage_names, strict=True)
        ]
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set(yscale="log", xlabel="backbone stage (lower -> higher)", ylabel="gradient L2 norm")
        ax.set_title("per-stage gradient norms", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out
