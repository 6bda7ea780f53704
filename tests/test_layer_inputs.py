"""Every registered layer refuses bad input with a ValueError naming it (flowlib/core.py, registry.make).

Unsupported dtypes (float16, bfloat16, integers, bool) used to fail deep inside torch with a raw
RuntimeError (even "MKL FFT error"), an empty batch with an IndexError, and ``make`` accepted
shapes no layer can work with; actnorm initialised on an empty batch turned into NaN.
"""

from __future__ import annotations

import pytest
import torch

import flowlib
from flowlib.layers.linear import ActNorm
from flowlib.layers.registry import SAMPLE_AXES
from flowlib.testing import brute_force_logdet, build_layer

NAMES = flowlib.layers.available()
SHAPE = (4, 4, 4)


def _layer(name):
    return flowlib.layers.make(name, shape=SHAPE)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool])
def test_unsupported_dtype_names_the_layer_and_what_works(name, dtype):
    layer = _layer(name)
    x = torch.ones(2, *SHAPE).to(dtype)
    for where, call in (("forward", layer), ("inverse", layer.inverse)):
        with pytest.raises(ValueError, match=rf"{name}\.{where} does not support dtype {dtype}.*float32.*float64"):
            call(x)


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_float64_still_work(name):
    layer = _layer(name).eval()
    for dtype in (torch.float32, torch.float64):
        layer = layer.to(dtype)
        y, logdet = layer(torch.randn(2, *SHAPE, dtype=dtype))
        assert y.dtype == dtype and logdet.shape == (2,)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["full", "shape"])
def test_empty_batch_is_refused(name, mode):
    layer = _layer(name)
    with flowlib.validation(mode):
        for where, call in (("forward", layer), ("inverse", layer.inverse)):
            with pytest.raises(ValueError, match=rf"{name}\.{where} got an empty batch \(B = 0"):
                call(torch.zeros(0, *SHAPE))


@pytest.mark.parametrize("name", [n for n in NAMES if n not in SAMPLE_AXES])
@pytest.mark.parametrize(
    "shape, problem",
    [
        ((-4, 4, 4), r"C in shape=\(C, H, W\) must be a positive integer"),
        ((0, 4, 4), r"C in shape=\(C, H, W\) must be a positive integer"),
        ((4, 0, 4), r"H in shape=\(C, H, W\) must be a positive integer"),
        ((4.0, 4, 4), r"C in shape=\(C, H, W\) must be a positive integer"),
        ((None, 4, 4), r"C in shape=\(C, H, W\) must be a positive integer"),
        (4, r"takes shape=\(C, H, W\) \(a tuple of sizes\), got shape=4"),
        ("4,4,4", r"takes shape=\(C, H, W\) \(a tuple of sizes\)"),
        ((4, 4), r"takes shape=\(C, H, W\), got shape=\(4, 4\) \(2 sizes\)"),
        ((4, 4, 4, 4), r"takes shape=\(C, H, W\), got shape=\(4, 4, 4, 4\) \(4 sizes\)"),
    ],
)
def test_make_refuses_bad_image_shapes(name, shape, problem):
    with pytest.raises(ValueError, match=rf"make\('{name}'\).*{problem}"):
        flowlib.layers.make(name, shape=shape)


def test_make_graph_shapes():
    adjacency = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    layer = flowlib.layers.make("graph_convexp", shape=(2, 3), adjacency=adjacency)
    assert layer.shape == (2, 3)
    with pytest.raises(ValueError, match=r"make\('graph_convexp'\): C in shape=\(N, C\) must be a positive"):
        flowlib.layers.make("graph_convexp", shape=(2, 0), adjacency=adjacency)
    with pytest.raises(ValueError, match=r"takes shape=\(N, C\) or shape=\(C, H, W\), got shape=\(2,\)"):
        flowlib.layers.make("graph_convexp", shape=(2,))


def test_make_elementwise_shapes():
    for shape in ((3,), (3, 5), (3, 4, 4)):
        assert flowlib.layers.make("slog", shape=shape).shape == shape
    with pytest.raises(ValueError, match=r"make\('slog'\) takes shape=\(C\) or shape=\(C, L\) or shape=\(C, H, W\)"):
        flowlib.layers.make("slog", shape=(3, 4, 4, 4))
    with pytest.raises(ValueError, match=r"make\('slog'\): C in shape=\(C\) must be a positive integer"):
        flowlib.layers.make("slog", shape=(-3,))


def test_make_accepts_sizes_of_any_integer_type():
    layer = flowlib.layers.make("conv1x1", shape=torch.Size([4, 4, 4]))
    assert layer.shape == (4, 4, 4) and all(type(s) is int for s in layer.shape)


def test_actnorm_refuses_to_initialise_on_an_empty_batch():
    an = ActNorm((3, 4, 4)).train()
    before = [p.detach().clone() for p in an.parameters()]
    with pytest.raises(ValueError, match=r"actnorm cannot initialise from an empty batch"):
        an.initialize(torch.zeros(0, 3, 4, 4))
    assert not an._initialized and not bool(an.initialized)
    assert all(torch.equal(a, b) for a, b in zip(before, an.parameters(), strict=True))  # no NaN, untouched
    y, _ = an(torch.randn(8, 3, 4, 4))  # the first real batch still initialises it
    assert an._initialized and torch.isfinite(y).all()
    assert y.mean((0, 2, 3)).abs().max() < 1e-5


# -- the shared helpers of flowlib.core ----------------------------------------------------


@pytest.mark.parametrize(
    "shape, kwargs, message",
    [
        ((4, 8), {}, r"demo needs shape=\(C, H, W\) with a fixed channel count C, got shape=\(4, 8\)"),
        ((None, 8, 8), {}, r"fixed channel count C, got shape=\(None, 8, 8\)"),
        ((4, None, 8), {"fixed_size": True}, r"with every size fixed, got shape=\(4, None, 8\)"),
        ((), {"ndim": None}, r"demo needs shape=\(C, \.\.\.\)"),
    ],
)
def test_sample_shape_names_the_layer_and_the_shape_it_needs(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        flowlib.core.sample_shape(shape, "demo", **kwargs)
    assert flowlib.core.sample_shape([4, None, None], "demo") == (4, None, None)
    assert flowlib.core.sample_shape((4, 3), "demo", ndim=None) == (4, 3)


@pytest.mark.parametrize("channels", [2, 5])
@pytest.mark.parametrize("swap", [False, True])
def test_halves_split_and_merge_back(channels, swap):
    x = torch.randn(2, channels, 3, 3)
    x_a, x_b = flowlib.core.split_halves(x, swap)
    first = channels // 2
    assert torch.equal(x_a, x[:, first:] if swap else x[:, :first])
    assert (x_a.shape[1], x_b.shape[1]) == flowlib.core.half_sizes(channels, swap)
    assert torch.equal(flowlib.core.merge_halves(x_a, x_b, swap), x)


def test_flow_distribution_is_the_change_of_variables():
    """``log_prob`` = standard-normal density of ``f(x)`` + log-det; ``sample`` inverts the flow in its dtype."""
    layer = build_layer("conv1x1", (2, 2, 2))
    density = flowlib.core.FlowDistribution(layer)
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    z, _ = layer(x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1) + brute_force_logdet(layer, x)
    torch.testing.assert_close(density.log_prob(x), expected, rtol=0, atol=1e-12)
    samples = density.sample(4, torch.Generator().manual_seed(0))
    assert samples.shape == (4, 2, 2, 2) and samples.dtype == torch.float64
    torch.testing.assert_close(
        layer(samples)[0], torch.randn(4, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
