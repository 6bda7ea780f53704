"""One contract test over every registered layer (brute-force float64 Jacobians)."""

import pytest
import torch

import flowlib
from flowlib.testing import build_layer, flow_errors

SHAPE = (4, 4, 4)
NAMES = flowlib.layers.available()

# Layers whose inverse is a series or an iteration: their documented tolerance.
INVERSE_TOL = {"convexp": 1e-6, "sylvester": 1e-6, "residual": 1e-6, "graph_convexp": 1e-6}


def test_all_required_names_registered():
    required = {
        "actnorm",
        "conv1x1",
        "conv1x1_lu",
        "conv1x1_exp",
        "convexp",
        "emerging",
        "woodbury",
        "periodic",
        "dct",
        "affine_coupling",
        "exp_coupling",
        "conf_coupling",
        "slog",
        "sylvester",
        "residual",
        "graph_convexp",
    }
    missing = required - set(NAMES)
    assert not missing, f"not registered: {sorted(missing)}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(4, 4, 4), (8, 8, 8)])
def test_builds_with_defaults(name, shape):
    layer = flowlib.layers.make(name, shape=shape)
    assert isinstance(layer, flowlib.Flow)
    y, logdet = layer(torch.randn(2, *shape))
    assert y.shape == (2, *shape) and logdet.shape == (2,)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("perturbed", [False, True], ids=["init", "perturbed"])
def test_inverse_and_logdet_match_brute_force(name, perturbed):
    layer = build_layer(name, SHAPE, scale=0.1 if perturbed else 0.0)
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    errors = flow_errors(layer, x)
    assert errors["inverse"] < INVERSE_TOL.get(name, 1e-6), errors
    assert errors["logdet"] < 1e-5, errors


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_clear_error(name):
    layer = flowlib.layers.make(name, shape=SHAPE)
    with pytest.raises(ValueError, match=rf"{name}.*\[B, 4, 4, 4\]"):
        layer(torch.randn(4, 4, 4))  # missing batch axis
    with pytest.raises(ValueError, match=rf"{name}.*channel count is 3, expected 4"):
        layer(torch.randn(2, 3, 4, 4))
    x = torch.randn(2, *SHAPE)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"{name}.*NaN"):
        layer(x)
    with pytest.raises(ValueError, match=rf"{name}.*NaN"):
        layer.inverse(x)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_on_odd_non_square_images(name):
    shape = (3, 5, 7)  # odd channel count (uneven coupling split), odd and unequal height and width
    layer = build_layer(name, shape, scale=0.05)
    x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y, logdet = layer(x)
        assert logdet.shape == (2,) and torch.isfinite(logdet).all()
        assert float((layer.inverse(y) - x).abs().max()) < INVERSE_TOL.get(name, 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_docstring_has_a_runnable_example(name):
    """Every registered layer documents a ``>>>`` example (run by ``pytest flowlib/layers`` as a doctest)."""
    doc = flowlib.layers.get(name).__doc__ or ""
    examples = [line.strip() for line in doc.splitlines() if line.strip().startswith(">>>")]
    assert any(f'make("{name}"' in line for line in examples), f"{name}: no '>>> ... make(\"{name}\", ...)' example"
    assert any("inverse" in line for line in examples), f"{name}: the example does not show the round trip"
