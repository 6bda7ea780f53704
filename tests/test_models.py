"""Tests of flowlib.models: invertibility, likelihood bookkeeping, sampling, presets, training."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math

import pytest
import torch

from flowlib.core import standard_normal_logp
from flowlib.layers import make
from flowlib.layers.convexp import ConvExp
from flowlib.layers.linear import ActNorm
from flowlib.models import ModelConfig, build_model, squeeze2d, unsqueeze2d
from flowlib.models.config import MIXINGS
from flowlib.models.dequant import context_encoder
from flowlib.models.mixing import PixelBias, make_mixing
from flowlib.nets import DenseBlock, DenseNet, GatedConv2d
from flowlib.presets import PRESETS
from flowlib.testing import flow_errors, perturb_

TINY = dict(
    image_shape=(1, 8, 8),
    n_levels=2,
    n_subflows=2,
    net="conv",
    hidden_channels=8,
    dequant_subflows=1,
    dequant_context=4,
)
# The official layout of Hoogeboom et al.'s code (as the paper-mixing preset), at TINY size.
OFFICIAL = dict(layout="official", actnorm=False, convexp_bias=True, dequant_encoder="densenet")


def _digits(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` of sklearn's 8x8 digits as uint8 ``[n, 1, 8, 8]`` (0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images, dtype=torch.float64)  # [1797, 8, 8]
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.round(images[idx] * 255 / 16).to(torch.uint8).unsqueeze(1)  # [n, 1, 8, 8]


def _ready(model, x, seed=0, scale=0.1):
    """Data-dependent init on ``x``, then random parameters so no layer is the identity; eval mode."""
    model.train()
    with torch.no_grad():
        model.log_prob(x)
    perturb_(model, scale, torch.Generator().manual_seed(seed))
    return model.eval()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_squeeze_is_a_permutation():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    y = squeeze2d(x)
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(y[:, 4 * 1 + 2 * 1 + 0], x[:, 1, 1::2, 0::2])  # channel 4c + 2i + j
    assert torch.equal(unsqueeze2d(y), x)
    assert torch.equal(torch.sort(y.flatten(1)).values, torch.sort(x.flatten(1)).values)


@pytest.mark.parametrize(
    "model_type,extra",
    [
        ("glow", dict(mixing="conv1x1", dequant="flow")),
        ("glow", dict(mixing="convexp", dequant_mixing="convexp", **OFFICIAL)),
        ("glow", dict(mixing="none", preprocess="logit", split_prior=False, learned_prior=False)),
        ("coupling", dict(coupling="exp")),
        ("sylvester", dict(net="densenet", densenet_depth=2, densenet_growth=4, n_intermediate_channels=4)),
    ],
)
def test_encode_decode_round_trip(model_type, extra):
    torch.manual_seed(0)
    model = build_model(ModelConfig(model_type=model_type, **{**TINY, **extra})).double()
    x = _digits(8)
    _ready(model, x)
    with torch.no_grad():
        xq = model.quantize_input(x)
        v, _ = model.dequantize(xq, _gen(3))
        v_again, _ = model.dequantize(xq, _gen(3))
        assert torch.equal(v, v_again)  # the dequantization noise is fixed by the generator
        latents, _ = model.encode(v)
        assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes
        assert max(float(z.abs().max()) for z in latents) > 0.1  # not a degenerate map
        err = (model.decode(latents) - v).abs().max()
    assert err < 1e-6, f"{model_type}: round trip error {err:.2e}"


@pytest.mark.parametrize(
    "model_type,extra",
    [
        ("glow", dict(mixing="conv1x1_lu", dequant="flow")),
        ("glow", dict(mixing="convexp", coupling="conf", preprocess="logit")),
        ("glow", dict(mixing="emerging", coupling="exp")),
        ("glow", dict(mixing="woodbury")),
        ("glow", dict(mixing="convexp", **OFFICIAL)),
        ("sylvester", dict()),
    ],
)
def test_log_prob_is_sum_of_terms_and_logdets_match_jacobian(model_type, extra):
    torch.manual_seed(1)
    model = build_model(ModelConfig(model_type=model_type, **{**TINY, **extra})).double()
    x = _digits(2)
    _ready(model, x, seed=1)
    parts = model.log_prob_parts(x, _gen(5))
    expected_names = {"discretization", "dequantization", "preprocess", "prior", "level0.split_prior"}
    if model.config.actnorm:
        expected_names |= {"level0.step0.actnorm", "level1.step1.actnorm"}
    else:
        assert not any(k.endswith("actnorm") for k in parts), list(parts)
    assert expected_names <= set(parts)
    log_prob = model.log_prob(x, _gen(5))
    assert torch.allclose(log_prob, sum(parts.values()), rtol=0, atol=1e-9)
    assert torch.allclose(parts["discretization"], torch.full((2,), -64 * 8 * math.log(2), dtype=torch.float64))

    # Layer and prior terms = log N(eps) + log|det d eps/dv| of the whole bijection (brute force).
    v, log_q = model.dequantize(model.quantize_input(x), _gen(5))
    assert torch.allclose(-log_q, parts["dequantization"])
    flow_terms = sum(t for k, t in parts.items() if k not in ("discretization", "dequantization"))
    for b in range(2):

        def to_latents(vb):
            return torch.cat([z.flatten(1) for z in model.encode(vb.view(1, 1, 8, 8))[0]], 1)[0]  # [64]

        jac = torch.autograd.functional.jacobian(to_latents, v[b].flatten())  # [64, 64]
        eps = to_latents(v[b].flatten())
        expected = standard_normal_logp(eps[None])[0] + torch.linalg.slogdet(jac).logabsdet
        assert torch.allclose(flow_terms[b], expected, atol=1e-8), (float(flow_terms[b]), float(expected))


@pytest.mark.parametrize(
    "extra",
    [dict(mixing="conv1x1"), dict(mixing="convexp", dequant_mixing="convexp", **OFFICIAL)],
    ids=["glow", "official"],
)
def test_flow_dequantizer_log_q_matches_jacobian(extra):
    # log q(u|x) = log N(eps) - log|det du/deps|: compare the log-det with the brute-force Jacobian.
    torch.manual_seed(2)
    model = build_model(ModelConfig(model_type="glow", dequant="flow", **TINY, **extra)).double()
    perturb_(model, 0.1, _gen(2))
    dq = model.dequantizer
    xq = model.quantize_input(_digits(1))
    eps = torch.randn(1, *dq.noise_shape, dtype=torch.float64, generator=_gen(7))
    with torch.no_grad():
        u, logdet = dq.transform(eps, xq)
    jac = torch.autograd.functional.jacobian(lambda e: dq.transform(e.view_as(eps), xq)[0].flatten(), eps.flatten())
    assert torch.allclose(logdet, torch.linalg.slogdet(jac).logabsdet, atol=1e-8)
    assert 0 < float(u.min()) and float(u.max()) < 1
    _, log_q = dq(xq, _gen(7))
    assert torch.allclose(log_q, standard_normal_logp(eps) - logdet)


def _tiny_variants():
    out = [pytest.param("glow", dict(mixing=m), id=f"glow-{m}") for m in MIXINGS]
    out += [pytest.param("glow", dict(coupling=c, mixing="conv1x1"), id=f"glow-{c}") for c in ("exp", "conf")]
    out += [pytest.param(kind, dict(), id=kind) for kind in ("coupling", "sylvester", "residual")]
    out.append(
        pytest.param(
            "glow",
            dict(
                mixing="convexp",
                net="densenet",
                densenet_depth=2,
                densenet_growth=4,
                n_intermediate_channels=4,
                gated_conv=True,
                dequant="flow",
            ),
            id="glow-densenet-flowdequant",
        )
    )
    out.append(pytest.param("glow", dict(mixing="convexp", **OFFICIAL), id="glow-official-layout"))
    return out


@pytest.mark.parametrize("model_type,extra", _tiny_variants())
def test_fresh_model_bpd_is_finite(model_type, extra):
    torch.manual_seed(0)
    model = build_model(ModelConfig(model_type=model_type, **{**TINY, **extra}))
    x = _digits(16)
    model.train()
    bpd = model(x)
    assert bpd.shape == (16,) and torch.isfinite(bpd).all()
    assert 0 < float(bpd.detach().mean()) < 64  # an untrained flow is bad, but not absurd
    bpd.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sample_shapes_and_temperature():
    torch.manual_seed(0)
    model = build_model("tiny", dequant="flow")
    _ready(model, _digits(32))
    for t in (0.0, 0.5, 1.0):
        s = model.sample(5, temperature=t, generator=_gen(2))
        assert s.dtype == torch.uint8 and s.shape == (5, 1, 8, 8)
    cold = model.sample(3, temperature=0.0, generator=_gen(1))
    assert torch.equal(cold, model.sample(3, temperature=0.0, generator=_gen(2)))  # T = 0: the mode, noise-free
    hot = model.sample(64, temperature=1.0, generator=_gen(3)).float()
    assert hot.std() > model.sample(64, temperature=0.3, generator=_gen(3)).float().std()
    assert torch.equal(model.sample(4, generator=_gen(9)), model.sample(4, generator=_gen(9)))


def test_sample_respects_n_bits():
    model = build_model("tiny", n_bits=3)
    s = model.sample(16, generator=_gen(0))
    assert torch.all(s % 32 == 0)  # 3-bit levels scaled back to 0..255
    lp = model.log_prob(_digits(4))
    assert torch.isfinite(lp).all()


def test_importance_weighted_bound_is_tighter():
    torch.manual_seed(0)
    model = build_model("tiny", dequant="flow", dequant_subflows=2)
    x = _digits(64)
    _ready(model, x, scale=0.05)
    with torch.no_grad():
        elbo = torch.stack([model.log_prob(x) for _ in range(8)]).mean(0)  # [B], mean of 8 single-sample bounds
        iw = model.log_prob_iw(x, n_samples=8)  # [B], 8 other draws
    gap = iw - elbo  # E[gap] >= 0 (Jensen); measured ~3 nats, standard error ~0.3
    stderr = float(gap.std()) / math.sqrt(len(gap))
    assert float(gap.mean()) > 4 * stderr, (float(gap.mean()), stderr)


def test_bad_inputs_raise():
    model = build_model("tiny")
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="integers"):
        model(torch.full((2, 1, 8, 8), 300.0))
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        build_model("tiny", n_layers=3)
    with pytest.raises(ValueError, match="divisible"):
        build_model("tiny", image_shape=(1, 6, 6))
    with pytest.raises(ValueError, match="mixing"):
        build_model("tiny", mixing="conv2x2")
    with pytest.raises(ValueError, match="dequant_mixing must be one of .*same"):
        build_model("tiny", dequant_mixing="conv2x2")
    with pytest.raises(ValueError, match="layout must be one of"):
        build_model("tiny", layout="realnvp")
    with pytest.raises(ValueError, match="dequant_encoder must be one of"):
        build_model("tiny", dequant_encoder="unet")


def test_presets_serialise_and_build():
    for name, cfg in ((name, p.model) for name, p in PRESETS.items()):
        again = ModelConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
        assert again == cfg, name
    assert build_model("tiny").num_parameters() < 100_000
    small = build_model("small-mixing").num_parameters()
    assert 1_000_000 <= small <= 5_000_000, small


def test_training_on_digits_lowers_bpd():
    torch.manual_seed(0)
    model = build_model("tiny")
    data = _digits(1024, seed=1)
    model.train()
    with torch.no_grad():
        model(data[:256])  # data-dependent init
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = _gen(0)
    losses = []
    for _ in range(200):
        batch = data[torch.randint(0, len(data), (64,), generator=g)]
        loss = model(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    print(f"digits bpd: first 20 steps {first:.3f}, last 20 steps {last:.3f}")
    assert last < first - 0.5, (first, last)


@pytest.mark.parametrize(("mixing", "growth"), [("conv1x1", 64), ("emerging", 63), ("woodbury", 63)])
def test_paper_mixing_matches_the_official_parameter_budget(mixing, growth):
    """The official paper-mixing models have about 55.9 M parameters (issue 7): within 5%, from the architecture."""
    with torch.device("meta"):  # count parameters without allocating 55 M floats
        model = build_model("paper-mixing", mixing=mixing, densenet_growth=growth)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 55.9e6 - 1) < 0.05, f"{mixing}: {n / 1e6:.2f} M parameters"


# Parameter counts of the official mixing models (main_experiment.py with the README's commands), worked
# out by hand from its modules: convexp (growth 63) 55,908,936 in all, 1x1 (growth 64) 57,196,036.
OFFICIAL_TOTALS = {"convexp": 55_908_936, "conv1x1": 57_196_036}
OFFICIAL_CONTEXT_ENCODER = 230_192


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("mixing", "growth"), [("conv1x1", 64), ("convexp", 63)])
def test_paper_mixing_has_the_official_parameter_count(mixing, growth):
    """Issue 15: paper-mixing within 0.5% of the official model (55.91 M with convexp)."""
    with torch.device("meta"):
        model = build_model("paper-mixing", mixing=mixing, densenet_growth=growth)
    n = _count(model)
    print(f"paper-mixing {mixing}: {n:,} parameters, official {OFFICIAL_TOTALS[mixing]:,}")
    assert abs(n / OFFICIAL_TOTALS[mixing] - 1) < 0.005, n
    assert _count(model.dequantizer.encoder) == OFFICIAL_CONTEXT_ENCODER


def test_paper_mixing_convexp_has_the_official_layout():
    with torch.device("meta"):
        model = build_model("paper-mixing")
    # The official layout: 21 convexp layers in the flow, 5 in the dequantizer, no actnorm,
    # per-pixel biases before and after each convexp (2 C H W = 6144 at 12 x 16 x 16).
    convexps = _convexps(model)
    assert len(convexps) == 10 + 10 + 1 + 4 + 1
    assert not any(isinstance(m, ActNorm) for m in model.modules())
    biases = [m for m in model.modules() if isinstance(m, PixelBias)]
    assert len(biases) == 2 * len(convexps)
    assert list(model.levels[0].steps[0]) == ["first_mixing", "coupling", "mixing"]
    assert _count(model.levels[0].steps[0]["mixing"]) - _count(model.levels[0].steps[0]["mixing"][1]) == 6144


def test_gated_conv_is_a_plus_b_sigmoid_c():
    torch.manual_seed(0)
    gate = GatedConv2d(5, 2).double()
    perturb_(gate, 0.5, _gen(1))
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    h = torch.nn.functional.conv2d(x, gate.conv.weight, gate.conv.bias)  # [3, 6, 4, 4]
    a, b, c = h[:, 0:2], h[:, 2:4], h[:, 4:6]
    assert torch.allclose(gate(x), a + b * torch.sigmoid(c), rtol=0, atol=1e-14)
    assert _count(gate) == 3 * 2 * (5 + 1)
    # The dense block ends in the gate, or in a plain (linear) 1x1 convolution when ungated.
    linear = DenseBlock(3, 4, depth=1, growth=2, gated=False).double()
    perturb_(linear, 0.5, _gen(2))
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    features = linear.layers(x)  # [2, 3 + 2, 5, 5]
    expected = torch.nn.functional.conv2d(features, linear.merge.weight, linear.merge.bias)
    assert torch.allclose(linear(x), expected, rtol=0, atol=1e-14)
    assert float(linear(x).min()) < 0  # a plain linear output, not clipped by a ReLU
    assert float(DenseNet(3, 4, depth=2, growth=4, intermediate=6)(x.float()).abs().max()) == 0  # zero-initialised head


def test_context_encoder_sizes():
    for kind, n in (("conv", 9 * 3 * 32 + 13 * 32 * 32 + 3 * 32), ("densenet", 230_192)):
        enc = context_encoder(kind, 3, 32)
        assert enc(torch.zeros(2, 3, 8, 6)).shape == (2, 32, 4, 3)
        assert _count(enc) == n, (kind, _count(enc))
    with pytest.raises(ValueError, match="context encoder"):
        context_encoder("unet", 3, 32)


def test_pixel_bias_and_convexp_with_biases_invert_exactly():
    torch.manual_seed(0)
    bias = perturb_(PixelBias((2, 3, 4)).double(), 1.0, _gen(0))
    x = torch.randn(5, 2, 3, 4, dtype=torch.float64)
    y, logdet = bias(x)
    assert torch.allclose(y - x, bias.bias.detach().expand_as(x), rtol=0, atol=1e-14)
    assert torch.equal(logdet, torch.zeros(5, dtype=torch.float64))
    assert float((bias.inverse(y) - x).abs().max()) < 1e-15
    with pytest.raises(ValueError, match=r"PixelBias needs shape=\(C, H, W\) with every size fixed"):
        PixelBias((2, None, None))
    layer = make_mixing("convexp", (4, 4, 4), convexp_bias=True).double()
    perturb_(layer, 0.1, _gen(1))
    assert float(layer[0].bias.abs().min()) > 0 and float(layer[2].bias.abs().min()) > 0
    errors = flow_errors(layer.eval(), torch.randn(2, 4, 4, 4, dtype=torch.float64))
    assert errors["inverse"] < 1e-6 and errors["logdet"] < 1e-8, errors
    assert type(make_mixing("conv1x1", (4, 4, 4), convexp_bias=True)) is type(make("conv1x1", shape=(4, 4, 4)))


def _convexps(module):
    return [m for m in module.modules() if isinstance(m, ConvExp)]


def test_mixing_kwargs_reach_every_mixing_layer_including_the_dequantizer():
    cfg = ModelConfig(
        model_type="glow", mixing="convexp", dequant="flow", dequant_mixing="convexp", **TINY, **OFFICIAL
    ).replace(mixing_kwargs={"kernel_size": 5})
    model = build_model(cfg)
    layers = _convexps(model)
    assert len(layers) == 2 * 2 + 1 + 1 + 1 and len(_convexps(model.dequantizer)) == 2
    assert all(m.kernel.shape[-1] == 5 for m in layers), [tuple(m.kernel.shape) for m in layers]
    # A dequantizer with another mixing layer does not get the model's kwargs, but its own.
    cfg = cfg.replace(dequant_mixing="conv1x1", mixing_kwargs={"rho": 0.25}, dequant_mixing_kwargs={})
    model = build_model(cfg)
    assert all(m.rho == 0.25 for m in _convexps(model)) and not _convexps(model.dequantizer)
    model = build_model(cfg.replace(dequant_mixing="same"))  # "same": the model's mixing layer and its kwargs
    assert all(m.rho == 0.25 for m in _convexps(model)) and len(_convexps(model.dequantizer)) == 2
    model = build_model(cfg.replace(dequant_mixing="convexp", dequant_mixing_kwargs={"rho": 0.125}))
    assert all(m.rho == 0.25 for m in _convexps(model.levels))
    assert all(m.rho == 0.125 for m in _convexps(model.dequantizer)) and _convexps(model.dequantizer)


def test_official_series_terms_reach_every_convexp_layer():
    """``mixing_kwargs={"train_terms": 6, "eval_terms": 13}`` (the official setting) reaches all 26 convexp layers."""
    if "train_terms" not in inspect.signature(ConvExp).parameters:
        pytest.skip("ConvExp has no train_terms argument yet (issue 15, item 4)")
    with torch.device("meta"):
        model = build_model("paper-mixing", mixing_kwargs={"train_terms": 6, "eval_terms": 13})
    layers = _convexps(model)
    assert len(layers) == 26 and len(_convexps(model.dequantizer)) == 5
    assert {(m.train_terms, m.eval_terms) for m in layers} == {(6, 13)}
    with torch.device("meta"):
        default = _convexps(build_model("paper-mixing"))
    assert {(m.train_terms, m.eval_terms) for m in default} != {(6, 13)}  # the kwargs made the difference
