"""The polyphase rewrite of BigVGAN's anti-aliased activation computes the same function."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from bigvgan.activations import Snake, SnakeBeta
from bigvgan.alias_free_activation.torch.act import Activation1d

from distill_serve.export.antialias import (
    PolyphaseActivation,
    UnsupportedActivation,
    polyphase_activations,
)
from distill_serve.export.demo import demo_vocoder_config
from distill_serve.export.graphs import export_onnx
from distill_serve.export.vocoder import random_vocoder


def _activation(kind: type[torch.nn.Module], logscale: bool, seed: int) -> Activation1d:
    torch.manual_seed(seed)
    act = kind(6, alpha_logscale=logscale)
    with torch.no_grad():
        for p in act.parameters():
            # log-scale params anywhere; linear ones away from 0 (1/alpha would blow up)
            p.copy_(torch.randn_like(p) * 0.5 if logscale else 0.5 + torch.rand_like(p))
    return Activation1d(act).eval()


@pytest.mark.parametrize("kind", [Snake, SnakeBeta])
@pytest.mark.parametrize("logscale", [False, True])
@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 61, 400])
def test_same_function_at_every_length(
    kind: type[torch.nn.Module], logscale: bool, length: int
) -> None:
    original = _activation(kind, logscale, seed=length)
    rewritten = PolyphaseActivation(original)
    x = 3 * torch.randn(2, 6, length)
    with torch.no_grad():
        want, got = original(x), rewritten(x)
    assert got.shape == want.shape
    # float32 rounding only; a wrong tap, phase or edge value is off by ~1e-2 or more
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < 2e-6, err


def test_edges_follow_replicate_padding() -> None:
    """A step at the very first and last sample: only exact edge handling matches there."""
    original = _activation(SnakeBeta, True, seed=1)
    x = torch.zeros(1, 6, 16)
    x[..., 0], x[..., -1] = 4.0, -3.0
    with torch.no_grad():
        err = (PolyphaseActivation(original)(x) - original(x)).abs()
    assert err.max() < 4e-6


def test_whole_vocoder_rewritten_and_equal() -> None:
    model = random_vocoder(demo_vocoder_config(), 0)
    model.remove_weight_norm()  # type: ignore[operator]
    model.eval()
    rewritten, count = polyphase_activations(model)
    expected = sum(type(m).__name__ == "Activation1d" for m in model.modules())
    assert count == expected > 0
    assert not any(type(m).__name__ == "Activation1d" for m in rewritten.modules())
    assert any(type(m).__name__ == "Activation1d" for m in model.modules())  # a copy
    x = torch.randn(1, 128, 23) * 2 - 4
    with torch.no_grad():
        want, got = model(x), rewritten(x)
    snr = 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum())
    assert snr > 100, snr


def test_graph_has_no_transposed_depthwise_convolution(tmp_path: Path) -> None:
    original = _activation(SnakeBeta, True, seed=2)
    path = export_onnx(
        PolyphaseActivation(original),
        [torch.randn(1, 6, 32)],
        ["x"],
        ["y"],
        [{2: torch.export.Dim("t", min=1, max=1 << 20)}],
        tmp_path / "act.onnx",
    )
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "ConvTranspose" not in ops and "Conv" in ops


def test_other_ratios_are_refused() -> None:
    act = Activation1d(Snake(4), up_ratio=3, down_ratio=3)
    with pytest.raises(UnsupportedActivation, match="ratio-2"):
        PolyphaseActivation(act)
