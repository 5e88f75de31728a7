"""Model contracts: shapes and point order, gradients everywhere, names, weights, tracing.

CPU, random init, offline, 64x128 inputs and narrow widths so the file stays fast.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from perception.errors import PerceptionError
from perception.models import ModelConfig, MultiTaskModel, build_model
from perception.models.backbone import Backbone
from perception.models.layers import ACT_NAMES, NORM_NAMES, ConvNormAct, make_act, make_norm
from perception.ops.points import dense_points
from perception.structures import HeadOutputs

H, W = 64, 128
SMALL = {"neck_width": 32, "head_width": 32, "num_classes": 3}
BACKBONES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "regnety_002",
    "convnext_tiny",
    "cspdarknet53",
]


def small_model(**overrides) -> MultiTaskModel:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SMALL, **overrides}))


def check_shapes(model: MultiTaskModel, out: HeadOutputs, b: int, h: int, w: int) -> None:
    """Every output has the documented shape; A matches ``dense_points`` for this size."""
    points, strides = dense_points(model.level_sizes((h, w)), model.strides)
    a = points.shape[0]
    assert isinstance(out, HeadOutputs)
    assert out.cls_logits.shape == (b, a, model.num_classes)
    assert out.box_dist.shape == (b, a, 4)
    assert out.seg_logits.shape == (b, model.num_seg, h, w)
    assert out.depth_log.shape == (b, 1, h, w)
    assert strides.shape == (a,)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from OpenMP threads; under CPU contention (parallel test
    runs on 2 cores) two spinning threads make each small op up to ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def resnet18() -> MultiTaskModel:
    return small_model()


@pytest.mark.parametrize("name", BACKBONES)
def test_backbones_forward_backward(name: str) -> None:
    model = small_model(backbone=name).train()
    out = model(torch.rand(2, 3, H, W))
    check_shapes(model, out, 2, H, W)
    assert model.strides == (8, 16, 32)
    loss = sum(t.float().square().mean() for t in out)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"non-finite gradient for {bad[:5]}"


def test_init_priors_and_eval_contract(resnet18: MultiTaskModel) -> None:
    """Same return type in eval; initial predictions are the documented priors."""
    model = resnet18.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, H, W))
    check_shapes(model, out, 1, H, W)
    assert out.cls_logits.sigmoid().mean().item() == pytest.approx(0.01, rel=0.2)
    assert out.depth_log.exp().median().item() == pytest.approx(15.0, rel=0.2)
    assert model.mean.shape == model.std.shape == (1, 3, 1, 1)
    assert "mean" in model.state_dict() and "std" in model.state_dict()


def test_point_order_matches_dense_points(resnet18: MultiTaskModel) -> None:
    """Point ``a`` of ``[B, A, K]`` is the cell whose centre ``dense_points`` gives for ``a``."""
    model = resnet18.eval()
    images = torch.rand(1, 3, H, W)
    with torch.no_grad():
        out = model(images)
        _, det_maps = model.neck(model.backbone((images - model.mean) / model.std))
        head = model.detection
        points, _ = dense_points(model.level_sizes((H, W)), model.strides)
        offset = 0
        for level, (x, s) in enumerate(zip(det_maps, model.strides, strict=True)):
            cls = head.cls_pred(head.cls_tower(x, level))  # [1, K, h, w]
            h, w = cls.shape[-2:]
            i, j = h - 1, w // 2  # a cell off the diagonal so rows and columns differ
            a = offset + i * w + j
            assert torch.allclose(out.cls_logits[0, a], cls[0, :, i, j], atol=1e-5)
            assert points[a].tolist() == [(j + 0.5) * s, (i + 0.5) * s]
            offset += h * w
    assert offset == out.cls_logits.shape[1]


@pytest.mark.parametrize("act", ACT_NAMES)
def test_every_activation(act: str) -> None:
    block = ConvNormAct(4, 8, 3, act=act)
    x = torch.rand(2, 4, 8, 8, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()
    assert isinstance(make_act(act), torch.nn.Module)


@pytest.mark.parametrize(("act", "norm"), [("prelu", "group"), ("gelu", "none"), ("relu", "batch")])
def test_model_with_act_and_norm(act: str, norm: str) -> None:
    model = small_model(act=act, norm=norm, drivable=False, neck_width=16, head_width=16)
    out = model(torch.rand(2, 3, H, W))
    check_shapes(model, out, 2, H, W)
    assert model.num_seg == 1


def test_unknown_names_list_valid_keys() -> None:
    with pytest.raises(PerceptionError, match="silu"):
        make_act("swish")
    with pytest.raises(PerceptionError, match="group"):
        make_norm("layer", 8)
    with pytest.raises(PerceptionError, match="relu"):
        ModelConfig(act="Relu")
    with pytest.raises(PerceptionError, match="batch"):
        ModelConfig(norm="bn")
    with pytest.raises(PerceptionError, match="resnet18"):
        build_model(ModelConfig(backbone="resnet_18"))
    with pytest.raises(PerceptionError, match="num_classes"):
        ModelConfig(num_classes=0)
    with pytest.raises(PerceptionError, match="neck_widht"):
        ModelConfig.from_dict({"neck_widht": 8})
    assert set(NORM_NAMES) == {"batch", "group", "none"}


def save_timm_weights(path: Path, name: str = "resnet18", **edits: torch.Tensor | None) -> dict:
    """Random weights of the full timm classifier ``name`` at ``path``; ``edits`` add
    (tensor) or drop (None) keys. Returns the saved state dict."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    state = timm.create_model(name).state_dict()
    for key, value in edits.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize(
    "file", ["resnet18.safetensors", "resnet18.pth", "efficientnet_b0.safetensors"]
)
def test_pretrained_from_local_file(tmp_path: Path, file: str) -> None:
    """Full classifier checkpoints load (the head is dropped) and every weight arrives."""
    name = file.split(".")[0]
    state = save_timm_weights(tmp_path / file, name)
    model = build_model(ModelConfig(**SMALL, backbone=name, pretrained=str(tmp_path / file)))
    loaded = model.backbone.body.state_dict()
    assert loaded and all(torch.equal(v, state[k]) for k, v in loaded.items())


@pytest.mark.parametrize(
    ("edits", "match"),
    [
        ({"layer4.1.bn2.weight": None}, "1 missing"),
        ({"layer9.weight": torch.ones(1)}, "unexpected"),
    ],
)
def test_pretrained_file_must_fit(tmp_path: Path, edits: dict, match: str) -> None:
    """A file that only partly fits (timm would load it partly, silently) is an error."""
    path = tmp_path / "w.safetensors"
    save_timm_weights(path, **edits)
    with pytest.raises(PerceptionError, match=match):
        Backbone("resnet18", pretrained=str(path))


def test_pretrained_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(PerceptionError, match=r"nope\.safetensors"):
        Backbone("resnet18", pretrained=str(missing))


def test_pretrained_hub_offline_fails_fast(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # no cached copy can answer
    start = time.monotonic()
    with pytest.raises(PerceptionError, match="hub"):
        Backbone("resnet18", pretrained=True)
    assert time.monotonic() - start < 10


def test_input_size_must_be_multiple_of_32(resnet18: MultiTaskModel) -> None:
    with pytest.raises(PerceptionError, match="multiples of 32"):
        resnet18(torch.rand(1, 3, 64, 100))


def test_export_runs_on_a_second_size(resnet18: MultiTaskModel) -> None:
    """Exported at 64x128 with H, W symbolic multiples of 32, run at 96x160: no size is
    baked in and the outputs match eager (the path ONNX export takes)."""
    model = resnet18.eval()
    rows, cols = torch.export.Dim("rows", max=64), torch.export.Dim("cols", max=64)
    exported = torch.export.export(
        model, (torch.rand(1, 3, H, W),), dynamic_shapes={"images": {2: 32 * rows, 3: 32 * cols}}
    )
    x = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        got, want = exported.module()(x), model(x)
    check_shapes(model, got, 1, 96, 160)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-4), (g - w).abs().max()


def test_channels_last(resnet18: MultiTaskModel) -> None:
    model = resnet18.eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, H, W).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x)
    model.to(memory_format=torch.contiguous_format)
    check_shapes(model, out, 1, H, W)
    assert math.isfinite(out.depth_log.sum().item())


def test_half_resolution_refine_keeps_the_tensors_and_the_output_size() -> None:
    """``dense_refine_stride: 2`` runs the decoders' 3x3 refine at H/2 x W/2 and upsamples
    only the raw outputs: same tensors (a release fine-tunes into it), full-size outputs,
    and the outputs are the refine-at-half-resolution result upsampled (not stride 1's)."""
    full, half = small_model(), small_model(dense_refine_stride=2)
    assert {k: v.shape for k, v in full.state_dict().items()} == {
        k: v.shape for k, v in half.state_dict().items()
    }
    half.load_state_dict(full.state_dict())
    full.eval(), half.eval()
    seen = []
    hook = half.lane.refine.register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
    x = torch.rand(1, 3, H, W)
    with torch.no_grad():
        out_full, out_half = full(x), half(x)
    hook.remove()
    check_shapes(half, out_half, 1, H, W)
    assert seen == [(H // 2, W // 2)]
    assert not torch.allclose(out_full.depth_log, out_half.depth_log)  # the knob does act
    with torch.no_grad():  # the same decoder by hand: refine at H/2, then only outputs x2
        dense, _ = half.neck(half.backbone((x - half.mean) / half.std))
        d = half.depth
        mid = torch.nn.functional.interpolate(
            d.squeeze(d.task(dense)), scale_factor=float(d.scale // 2), mode="bilinear"
        )
        want = torch.nn.functional.interpolate(
            d.out(d.refine(mid)), scale_factor=2.0, mode="bilinear"
        )
    assert torch.allclose(out_half.depth_log, want, atol=1e-5)
    for bad in (3, 0, True):
        with pytest.raises(PerceptionError, match="dense_refine_stride must be 1 or 2"):
            ModelConfig(dense_refine_stride=bad)
