"""Layer-specific checks of the invertible linear layers (the contract test covers the generic ones).

actnorm, conv1x1, conv1x1_lu, conv1x1_exp, emerging, woodbury, periodic, dct, and the
``python -m flowlib.bench layers`` benchmark.
"""

import contextlib
import io
import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import flowlib
from flowlib.testing import brute_force_logdet, build_layer, perturb_

LINEAR = ["actnorm", "conv1x1", "conv1x1_lu", "conv1x1_exp", "emerging", "woodbury", "periodic", "dct"]


class _Inverse(nn.Module):
    """``functional_call`` runs ``forward``; this wrapper makes that the layer's inverse."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, y):
        return self.flow.inverse(y)


@pytest.mark.parametrize("name", ["conv1x1_lu", "conv1x1_exp", "periodic", "dct"])
def test_gradcheck_parameters_and_input(name):
    layer = build_layer(name, (2, 3, 3))
    inverse = _Inverse(layer)
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def forward_fn(x, *values):
        return functional_call(layer, dict(zip(names, values, strict=True)), (x,))

    def inverse_fn(y, *values):
        return functional_call(inverse, {f"flow.{n}": v for n, v in zip(names, values, strict=True)}, (y,))

    assert torch.autograd.gradcheck(forward_fn, (x, *params))
    assert torch.autograd.gradcheck(inverse_fn, (x, *params))


def test_actnorm_data_dependent_init_runs_once_and_is_saved():
    layer = flowlib.layers.make("actnorm", shape=(3, 5, 4)).double()
    assert "initialized" in layer.state_dict() and not layer.state_dict()["initialized"]
    x = 3.0 + 2.0 * torch.randn(16, 3, 5, 4, dtype=torch.float64)
    y, logdet = layer(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(logdet, 20 * layer.logs.sum().expand(16))
    assert layer.state_dict()["initialized"]

    params = [p.detach().clone() for p in layer.parameters()]
    layer(torch.randn(16, 3, 5, 4, dtype=torch.float64) * 10 - 5)  # second batch: no re-initialisation
    assert all(torch.equal(a, b) for a, b in zip(params, layer.parameters(), strict=True))

    fresh = flowlib.layers.make("actnorm", shape=(3, 5, 4)).double()
    fresh.load_state_dict(layer.state_dict())  # a resumed checkpoint must not re-initialise either
    fresh(torch.randn(4, 3, 5, 4, dtype=torch.float64) * 10)
    assert all(torch.equal(a, b) for a, b in zip(params, fresh.parameters(), strict=True))


def test_actnorm_eval_mode_does_not_initialise():
    layer = flowlib.layers.make("actnorm", shape=(2, 3, 3)).eval()
    y, _ = layer(5 + torch.randn(4, 2, 3, 3))
    assert not layer.state_dict()["initialized"] and torch.all(y > 0)


def _actnorm_rank(rank, world, init_file, x, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    layer = flowlib.layers.make("actnorm", shape=tuple(x.shape[1:])).double()
    layer(x.chunk(world)[rank])
    out[rank] = torch.cat([layer.bias.detach(), layer.logs.detach()])
    torch.distributed.destroy_process_group()


def test_actnorm_init_is_all_reduced_across_ranks(tmp_path):
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).double()
    x[:4] += 5  # the two ranks see very different halves
    reference = flowlib.layers.make("actnorm", shape=(3, 4, 4)).double()
    reference(x)
    out = mp.Manager().dict()
    mp.spawn(_actnorm_rank, args=(2, tmp_path / "init", x, out), nprocs=2)
    expected = torch.cat([reference.bias.detach(), reference.logs.detach()])
    assert torch.allclose(out[0], expected) and torch.allclose(out[1], expected)


def test_periodic_equals_circular_convolution_by_rolls():
    layer = build_layer("periodic", (3, 5, 4), scale=0.3)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    kernel = layer.kernel.detach()
    k, r = kernel.shape[-1], kernel.shape[-1] // 2
    expected = torch.zeros_like(x)
    for a in range(k):
        for b in range(k):  # y[h, w] += K[:, :, a, b] x[(h + a - r) mod H, (w + b - r) mod W]
            shifted = torch.roll(x, shifts=(r - a, r - b), dims=(2, 3))
            expected += torch.einsum("ij,bjhw->bihw", kernel[:, :, a, b], shifted)
    y, _ = layer(x)
    assert torch.allclose(y, expected, atol=1e-12)


def test_periodic_kernel_larger_than_image_wraps():
    layer = build_layer("periodic", (2, 2, 3), kernel_size=5, scale=0.3)
    x = torch.randn(2, 2, 2, 3, dtype=torch.float64)
    # On 3 x 3 tiles of x a valid convolution reads every wrapped tap: out[i] = sum_a K[a] x[(i + a) mod H].
    expected = F.conv2d(x.repeat(1, 1, 3, 3), layer.kernel.detach())
    y, _ = layer(x)
    H, W = 2, 3
    assert torch.allclose(y, expected[:, :, H - 2 : 2 * H - 2, W - 2 : 2 * W - 2], atol=1e-12)


def test_dct_equals_half_sample_symmetric_convolution():
    layer = build_layer("dct", (3, 5, 6), scale=0.3, radius=2)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    weight = layer.weight.detach()
    r = weight.shape[-1] - 1
    offsets = torch.arange(-r, r + 1).abs()
    kernel = weight[:, :, offsets][:, :, :, offsets]  # even-symmetric [C, C, 2r+1, 2r+1]
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (r, r), (r, r)), mode="symmetric"))
    y, _ = layer(x)
    assert torch.allclose(y, F.conv2d(padded, kernel), atol=1e-12)


def test_conv1x1_exp_weight_is_scipy_expm():
    layer = build_layer("conv1x1_exp", (5, 2, 2), scale=0.5)
    expected = torch.from_numpy(scipy.linalg.expm(layer.A.detach().numpy()))
    assert torch.allclose(layer.weight(), expected, atol=1e-12)
    assert torch.allclose(layer.inverse_weight() @ layer.weight(), torch.eye(5, dtype=torch.float64), atol=1e-12)


def test_conv1x1_lu_weight_matches_its_logdet():
    layer = build_layer("conv1x1_lu", (6, 2, 2), scale=0.3)
    assert torch.allclose(torch.linalg.slogdet(layer.weight()).logabsdet, layer.logs.sum(), atol=1e-12)


def test_emerging_inverse_exact_on_non_square_image():
    layer = build_layer("emerging", (3, 6, 5), scale=0.2)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    y, logdet = layer(x)
    assert (layer.inverse(y) - x).abs().max() < 1e-10
    assert torch.allclose(logdet, brute_force_logdet(lambda t: layer(t)[0], x), atol=1e-8)


def test_woodbury_logdet_equals_dense_slogdet():
    layer = build_layer("woodbury", (3, 4, 5), scale=0.3, channel_rank=2, spatial_rank=7)
    C, N = 3, 20
    W_c = torch.eye(C, dtype=torch.float64) + layer.Uc @ layer.Vc
    W_s = torch.eye(N, dtype=torch.float64) + layer.Us @ layer.Vs
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y, logdet = layer(x)
    dense = N * torch.linalg.slogdet(W_c).logabsdet + C * torch.linalg.slogdet(W_s).logabsdet
    assert torch.allclose(logdet, dense.expand(2), atol=1e-10)
    assert torch.allclose(y.reshape(2, C, N), W_c @ x.reshape(2, C, N) @ W_s.T, atol=1e-12)


@pytest.mark.parametrize("name", LINEAR)
def test_float32_round_trip_at_training_size(name):
    torch.manual_seed(0)
    layer = flowlib.layers.make(name, shape=(12, 16, 16))
    layer(torch.randn(16, 12, 16, 16))  # data-dependent init
    layer.eval()
    perturb_(layer, 0.05, torch.Generator().manual_seed(1))
    x = torch.randn(4, 12, 16, 16)
    y, logdet = layer(x)
    assert y.dtype == torch.float32 and torch.isfinite(logdet).all()
    assert (layer.inverse(y) - x).abs().max() < 1e-4


@pytest.mark.parametrize("name", LINEAR)
def test_logdet_only_matches_forward(name):
    layer = build_layer(name, (3, 4, 5))
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    _, logdet = layer(x)  # first: actnorm initialises on it
    assert torch.allclose(layer.logdet(x), logdet, atol=1e-12)


def test_bench_layers_prints_json_lines():
    from flowlib.bench.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["layers", "--shape", "4", "4", "4", "--batch", "2", "--repeats", "1", "--names", "conv1x1", "periodic"])
    records = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    assert [r["layer"] for r in records] == ["conv1x1", "periodic"]
    for r in records:
        assert r["forward_ms"] > 0 and r["inverse_ms"] > 0 and r["logdet_ms"] > 0
        assert r["inverse_error"] < 1e-4 and r["shape"] == [4, 4, 4]
    assert records[0]["forward_ratio"] == 1.0 and records[1]["params"] == 4 * 4 * 3 * 3
    assert "periodic" in out.getvalue().split("{")[0]  # the table comes first
