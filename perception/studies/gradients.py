"""Why a deep CNN trains: gradient flow through a deep plain stack, per activation, with
and without residual connections + BatchNorm.

Task: drivable-area segmentation (per-pixel BCE) of synthetic scenes rendered at
``SIZE`` (cached under ``<out>/data``; train and held-out images from fixed seeds, the same
for every arm). Network: a linear 3x3 stem, ``DEPTH`` same-width 3x3 layers, a 1x1 head.
The layers are ``act(conv(x))`` (plain), ``act(bn(conv(x)))`` (``+bn``) or the
pre-activation residual ``x + conv(act(bn(x)))`` (``+res+bn``, He et al. 2016), so the
skip path is an exact identity. Every conv starts from N(0, gain^2 / fan_in) with the
activation's ``calculate_gain`` (the init each activation is meant to have), biases 0.

Optimiser: plain SGD with momentum and one learning rate for all arms, global gradient
norm clipped at ``CLIP`` (a guard against divergence; it only ever shrinks a step, so it
cannot rescue a vanishing gradient). SGD, not Adam: Adam rescales every parameter's step
to a similar size, which would hide exactly the gradient magnitudes this study is about.

Measured per arm and seed: the L2 norm of each body layer's conv-weight gradient at
initialisation (mean over ``INIT_BATCHES`` batches) and at 10 % / 50 % / 100 % of training;
the loss curve; held-out BCE and IoU (BatchNorm statistics recomputed over the training
images first, see ``precise_bn``). An arm *trains* when its held-out BCE ends below
``TRAINS_BELOW`` x the BCE of the best image-blind prediction (the training split's
drivable frequency at every pixel): learning the bias alone never passes.

Cost at ``budget=1.0`` (7 arms x 2 seeds x ``STEPS`` steps, 640 scenes): 19 min, measured
end to end on a 2-core CPU with 1 torch thread while another training run shared the
cores (0.11-0.16 s per step; torch's default 2 threads on those busy cores was ~7x
slower per step). ``budget`` scales steps and images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from perception.studies.plots import pyplot, save
from perception.studies.report import Result, cell
from perception.studies.scenes import render_scenes

NAME = "gradients"
SIZE = (32, 48)  # H, W of the rendered scenes
DEPTH, WIDTH = 16, 16  # body layers (3x3 conv each) and their channels
STEPS, BATCH, LR, MOMENTUM, CLIP = 600, 16, 0.05, 0.9, 1.0
NUM_TRAIN, NUM_VAL = 512, 128
DATA_SEED = 2024  # scenes: train = DATA_SEED, held-out = DATA_SEED + 1, for every arm
INIT_BATCHES = 4
PROBE_AT = (0.1, 0.5, 1.0)  # fractions of training at which gradient norms are recorded
TRAINS_BELOW = 0.5
ARMS: dict[str, tuple[str, bool, bool]] = {  # name -> (activation, batch norm, residual)
    "sigmoid": ("sigmoid", False, False),
    "tanh": ("tanh", False, False),
    "relu": ("relu", False, False),
    "relu+bn": ("relu", True, False),
    "sigmoid+res+bn": ("sigmoid", True, True),
    "tanh+res+bn": ("tanh", True, True),
    "relu+res+bn": ("relu", True, True),
}
_ACTS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def _init(conv: nn.Conv2d, gain: float) -> None:
    """Weights N(0, gain^2 / fan_in), bias 0: keeps the forward signal's scale for an
    activation of that gain (He init for ReLU), so no arm starts handicapped."""
    nn.init.normal_(conv.weight, std=gain / math.sqrt(conv.weight[0].numel()))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class Layer(nn.Module):
    """One 3x3 layer of the stack, ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, width: int, act: str, norm: bool, residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=not norm)
        self.norm = nn.BatchNorm2d(width) if norm else nn.Identity()
        self.act = _ACTS[act]()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        if self.residual:
            return x + self.conv(self.act(self.norm(x)))
        return self.act(self.norm(self.conv(x)))


class Stack(nn.Module):
    """Linear 3x3 stem -> ``depth`` layers -> 1x1 head: ``[B, 3, H, W] -> [B, 1, H, W]``."""

    def __init__(self, act: str, norm: bool, residual: bool, depth: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.layers = nn.Sequential(*(Layer(width, act, norm, residual) for _ in range(depth)))
        self.head = nn.Conv2d(width, 1, 1)
        for conv in (self.stem, self.head):
            _init(conv, 1.0)  # linear maps
        for layer in self.layers:
            _init(layer.conv, nn.init.calculate_gain(act))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))

    def grad_norms(self) -> list[float]:
        """L2 norm of each body layer's conv-weight gradient, input side first."""
        return [float(layer.conv.weight.grad.norm()) for layer in self.layers]


def load_data(out: Path, num: int, seed: int, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Cached scenes as ``images [N, 3, H, W]`` in [0, 1] and ``drivable [N, 1, H, W]``."""
    scenes = render_scenes(out, num, size, seed)
    images = torch.from_numpy(scenes["image"]).permute(0, 3, 1, 2).float() / 255.0
    return images, torch.from_numpy(scenes["drivable"]).float()[:, None]


def ratio_log10(norms: Sequence[float]) -> float:
    """log10 of first-layer over last-layer gradient norm: -3 = 1000x smaller at the input."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.log10(np.float64(norms[0]) / np.float64(norms[-1])))


def _backward(model: Stack, images: Tensor, target: Tensor) -> float:
    model.zero_grad(set_to_none=True)
    loss = F.binary_cross_entropy_with_logits(model(images), target)
    loss.backward()
    return float(loss.detach())


@torch.no_grad()
def precise_bn(model: Stack, images: Tensor) -> None:
    """Set every BatchNorm's statistics to those of ``images`` under the final weights.

    Running averages lag behind weights that still move at the end of training; on the
    held-out set that lag alone doubled some seeds' BCE. Scoring optimisation, not that
    artefact, needs the exact statistics ("precise BN"): one pass over all the images,
    so mean and variance are exact. No-op for arms without BN.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = 1.0  # keep only this pass's statistics
    if norms:
        model.train()(images)
    for norm in norms:
        norm.momentum = 0.1


def _heldout(model: Stack, images: Tensor, target: Tensor, prior: float) -> dict[str, float]:
    """Held-out BCE, BCE of the constant ``prior`` (image-blind), and IoU at p = 0.5."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in images.split(64)])
    model.train()
    bce = float(F.binary_cross_entropy_with_logits(logits, target))
    p = torch.full_like(target, prior)
    prior_bce = float(F.binary_cross_entropy(p, target))
    pred = logits > 0
    union = float((pred | (target > 0.5)).sum())
    iou = float((pred & (target > 0.5)).sum()) / union if union else 1.0
    return {"bce": bce, "prior_bce": prior_bce, "rel_bce": bce / prior_bce, "iou": iou}


def train_arm(
    arm: str,
    seed: int,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    steps: int,
    depth: int,
    width: int,
) -> dict:
    """Init gradient norms, a training run and its held-out scores for one arm and seed."""
    images, target, val_images, val_target = data
    torch.manual_seed(seed)
    model = Stack(*ARMS[arm], depth=depth, width=width)
    batches = torch.Generator().manual_seed(seed)  # the same batches for every arm
    order = [torch.randint(len(images), (BATCH,), generator=batches) for _ in range(steps)]
    init = [
        (_backward(model, images[idx], target[idx]), model.grad_norms())
        for idx in order[:INIT_BATCHES]
    ]
    init_norms = np.mean([norms for _, norms in init], axis=0).tolist()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    probe_steps = sorted({max(1, round(f * steps)) for f in PROBE_AT})
    losses, during = [], {}
    for step, idx in enumerate(order, start=1):
        loss = _backward(model, images[idx], target[idx])
        losses.append(loss if math.isfinite(loss) else math.nan)
        if step in probe_steps:
            during[str(step)] = model.grad_norms()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
    precise_bn(model, images)
    tail = losses[-max(1, steps // 10) :]
    return {
        "init_loss": float(np.mean([loss for loss, _ in init])),
        "init_grad_norms": init_norms,
        "grad_ratio_log10": ratio_log10(init_norms),
        "grad_norms_during": during,
        "losses": losses,
        "final_loss": float(np.mean(tail)),
        **_heldout(model, val_images, val_target, float(target.mean())),
    }


def summarise(arm: str, per_seed: Sequence[dict]) -> dict:
    """One table row, mean ± std over seeds; ``trains`` counts the seeds that pass."""
    row: dict = {"arm": arm}
    for key in ("grad_ratio_log10", "init_loss", "final_loss", "rel_bce", "iou"):
        row[key] = cell([r[key] for r in per_seed])
    passed = sum(r["rel_bce"] < TRAINS_BELOW for r in per_seed)
    row["trains"] = ("yes" if passed == len(per_seed) else "no") + f" ({passed}/{len(per_seed)})"
    return row


def plot(raw: dict, path: Path) -> Path:
    """Per-layer gradient norm (log y) at init and mid-training, and the loss curves."""
    plt = pyplot()
    colors = {"sigmoid": "tab:green", "tanh": "tab:orange", "relu": "tab:blue"}
    styles = {(False, False): ":", (True, False): "--", (True, True): "-"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for arm, per_seed in raw["arms"].items():
        act, norm, residual = ARMS[arm]
        style = {"color": colors[act], "linestyle": styles[norm, residual], "label": arm}
        runs = list(per_seed.values())
        probed = sorted(runs[0]["grad_norms_during"], key=int)
        mid = probed[len(probed) // 2]
        for ax, key in ((axes[0], None), (axes[1], mid)):
            norms = [
                r["init_grad_norms"] if key is None else r["grad_norms_during"][key] for r in runs
            ]
            mean = np.exp(np.mean(np.log(np.maximum(norms, 1e-30)), axis=0))  # geometric
            ax.plot(range(1, len(mean) + 1), mean, marker="o", markersize=3, **style)
        curve = np.nanmean([r["losses"] for r in runs], axis=0)
        window = max(1, len(curve) // 50)
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        axes[2].plot(np.arange(len(smooth)) + window, smooth, **style)
    axes[0].set(title="conv-weight gradient norm at init", yscale="log")
    axes[1].set(title=f"... at training step {mid}", yscale="log")
    for ax in axes[:2]:
        ax.set(xlabel="layer (1 = next to the input)", ylabel="||dL/dW||")
    axes[2].set(title="training loss (BCE, smoothed)", xlabel="step", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    return save(fig, path)


def run(
    out: Path,
    budget: float = 1.0,
    seeds: Sequence[int] = (0, 1),
    *,
    size: tuple[int, int] = SIZE,
    depth: int = DEPTH,
    width: int = WIDTH,
) -> Result:
    """Every arm on the same scenes, steps, batches and seeds; draws ``gradients.png``."""
    out = Path(out)
    steps = max(INIT_BATCHES, round(STEPS * budget))
    num_train, num_val = max(16, round(NUM_TRAIN * budget)), max(8, round(NUM_VAL * budget))
    data = (
        *load_data(out, num_train, DATA_SEED, size),
        *load_data(out, num_val, DATA_SEED + 1, size),
    )
    raw = {
        "arms": {
            arm: {str(s): train_arm(arm, s, data, steps, depth, width) for s in seeds}
            for arm in ARMS
        }
    }
    rows = [summarise(arm, list(per_seed.values())) for arm, per_seed in raw["arms"].items()]
    columns = ["arm", "grad_ratio_log10", "init_loss", "final_loss", "rel_bce", "trains", "iou"]
    plot(raw, out / f"{NAME}.png")
    setup = {
        "task": "drivable-area segmentation, per-pixel BCE, synthetic scenes",
        "image_size_hw": list(size),
        "train_images": num_train,
        "heldout_images": num_val,
        "data_seeds": {"train": DATA_SEED, "heldout": DATA_SEED + 1},
        "network": f"linear 3x3 stem, {depth} x 3x3 conv layers of width {width}, 1x1 head",
        "init": "N(0, gain^2/fan_in), gain = torch calculate_gain(activation); biases 0",
        "optimizer": f"SGD lr {LR} momentum {MOMENTUM}, grad norm clipped at {CLIP}",
        "steps": steps,
        "batch": BATCH,
        "seeds": list(seeds),
        "grad_ratio_log10": "log10(||grad W_1|| / ||grad W_last||) at init, mean of "
        f"{INIT_BATCHES} batches",
        "rel_bce": "held-out BCE / BCE of the image-blind prior (train drivable frequency)",
        "trains": f"held-out BCE < {TRAINS_BELOW} x the prior's BCE (seeds passing)",
        "iou": "held-out drivable IoU at p = 0.5",
        "batch_norm": "statistics recomputed over the training images before held-out scoring",
    }
    return Result(NAME, columns, rows, f"{NAME}.png", setup, raw)
