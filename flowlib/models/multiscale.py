"""The multi-scale image flow: ``FlowModel`` and ``build_model``.

::

    x (uint8) --dequantize--> v = (x + u) / 2^n_bits --preprocess--> y
    for each level:  squeeze -> n_subflows steps -> split (z2 leaves with its prior; not on the last level)
    last level's output -> Gaussian prior

    log P(x) >= log N(eps) + sum(log-dets) - D n_bits log 2 - log q(u | x)

where ``eps`` are the standardised latents (see :mod:`flowlib.models.priors`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core import get_validation
from ..layers import make
from .config import COUPLINGS, ModelConfig
from .dequant import FlowDequantizer, Preprocess, UniformDequantizer
from .mixing import make_mixing
from .priors import GaussianPrior, SplitPrior
from .reshape import Flip, Squeeze

__all__ = ["FlowModel", "build_model"]


def _step(cfg: ModelConfig, shape: tuple, index: int, first: bool) -> nn.ModuleDict:
    """Step ``index`` of flow at ``shape``, as an ordered ``name -> Flow`` dict (``first``: the model's first step)."""
    layers = {}
    if cfg.model_type == "glow" and cfg.layout == "official" and first and cfg.mixing != "none":
        layers["first_mixing"] = make_mixing(cfg.mixing, shape, cfg.convexp_bias, **cfg.mixing_kwargs)
    if cfg.actnorm:
        layers["actnorm"] = make("actnorm", shape=shape)
    if cfg.model_type in ("glow", "coupling"):
        mixing = "conv1x1" if cfg.model_type == "coupling" else cfg.mixing
        swap = mixing == "none" and index % 2 == 1  # no mixing: alternate the transformed half
        coupling = make(COUPLINGS[cfg.coupling], shape=shape, net=cfg.net, swap=swap, **cfg.net_kwargs())
        if mixing == "none":
            layers["coupling"] = coupling
        else:
            mix = make_mixing(mixing, shape, cfg.convexp_bias, **(cfg.mixing_kwargs if mixing == cfg.mixing else {}))
            official = cfg.model_type == "glow" and cfg.layout == "official"
            layers.update({"coupling": coupling, "mixing": mix} if official else {"mixing": mix, "coupling": coupling})
    elif cfg.model_type == "sylvester":
        layers["sylvester"] = make("sylvester", shape=shape, hidden=cfg.hidden_channels)
        layers["flip"] = Flip(shape)
    else:  # residual
        layers["residual"] = make("residual", shape=shape, hidden=cfg.hidden_channels)
    return nn.ModuleDict(layers)


class _Level(nn.Module):
    """``squeeze -> steps -> split`` at one resolution (``split`` is ``None`` on the last level)."""

    def __init__(self, cfg: ModelConfig, shape: tuple, first: bool, last: bool):
        super().__init__()
        self.squeeze = Squeeze(shape)
        shape = self.squeeze.out_shape
        self.steps = nn.ModuleList(_step(cfg, shape, j, first and j == 0) for j in range(cfg.n_subflows))
        self.split = None
        if not last:
            self.split = SplitPrior(shape, learned=cfg.split_prior, net=cfg.net, **cfg.net_kwargs())
            shape = self.split.out_shape
        self.out_shape = shape


class FlowModel(nn.Module):
    """Multi-scale normalizing flow on discrete images, with dequantization and priors.

    Formula: ``log P(x) >= E_q[ log N(eps) + sum_k log|det J_k| - D n_bits log 2 - log q(u | x) ]``
    for ``v = (x + u) / 2^n_bits``, ``u ~ q(u | x)`` (uniform, or a conditional flow), and
    ``eps`` = the standardised latents of all split priors and of the final prior.
    Inverse: :meth:`decode` runs every layer's inverse in reverse order; :meth:`sample`
    decodes ``eps ~ N(0, T^2)`` and quantizes to ``uint8``.
    Log-determinant: see :meth:`log_prob_parts` (one entry per layer, per prior, plus the
    dequantization and discretization parts); ``log_prob`` is their sum.
    Cost: one pass through all layers (plus the dequantization flow).
    Shapes: ``x: [B, C, H, W]`` uint8 (or float integers in ``[0, 2^n_bits)``) ``-> [B]``.
    Reference: Glow (Kingma & Dhariwal, 2018) for the multi-scale layout; Flow++ (Ho et al.,
    2019) for variational dequantization; Hoogeboom et al. (2020) for the paper's sizes.
    Taught in ``notebooks/05_cifar10.ipynb``.

    Data-dependent initialisation (actnorm) happens on the first forward in training mode.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        C, H, W = config.image_shape
        self.n_dims = C * H * W
        self.preprocess = Preprocess(config.image_shape, config.preprocess, config.logit_alpha)
        if config.dequant == "uniform":
            self.dequantizer = UniformDequantizer()
        else:
            self.dequantizer = FlowDequantizer(
                config.image_shape,
                config.n_bits,
                config.dequant_subflows,
                config.dequant_context,
                config.dequant_mixing_layer(),
                config.net,
                encoder=config.dequant_encoder,
                first_mixing=config.layout == "official",
                mixing_kwargs=config.dequant_mixing_options(),
                convexp_bias=config.convexp_bias,
                **config.net_kwargs(),
            )
        levels, shape = [], config.image_shape
        for i in range(config.n_levels):
            levels.append(_Level(config, shape, first=i == 0, last=i == config.n_levels - 1))
            shape = levels[-1].out_shape
        self.levels = nn.ModuleList(levels)
        self.prior = GaussianPrior(shape, learned=config.learned_prior)
        self.latent_shapes = [lv.split.latent_shape for lv in self.levels if lv.split is not None]
        self.latent_shapes.append(self.prior.latent_shape)

    # -- data -------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        return self.prior.mean.dtype

    def quantize_input(self, x: Tensor) -> Tensor:
        """Integers in ``[0, 2^n_bits)`` as floats of the model's dtype; ``uint8`` is reduced to ``n_bits``."""
        shape = tuple(self.config.image_shape)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != shape:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"FlowModel expects images of shape [B, {', '.join(map(str, shape))}] (uint8 or integer-valued "
                f"floats), got {got}; build the model with image_shape matching the data."
            )
        levels = 2**self.config.n_bits
        if x.dtype == torch.uint8:
            return torch.div(x.to(self._dtype()), 2 ** (8 - self.config.n_bits), rounding_mode="floor")
        x = x.to(self._dtype())
        if get_validation() == "full" and bool(((x < 0) | (x >= levels) | (x != x.floor())).any()):
            raise ValueError(f"float images must hold integers in [0, {levels}) (n_bits={self.config.n_bits})")
        return x

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(v, log q)``: ``v = (x + u) / 2^n_bits`` in ``[0, 1)``, ``u ~ q(u | x)``.

        ``x`` holds integers in ``[0, 2^n_bits)`` (the output of :meth:`quantize_input`).
        """
        u, log_q = self.dequantizer(x, generator=generator)
        return (x + u) / 2**self.config.n_bits, log_q

    # -- the bijection -----------------------------------------------------------------
    def encode(self, v: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Continuous ``v in [0, 1)^D`` -> (standardised latents, named log-det and prior parts ``[B]``)."""
        y, logdet = self.preprocess(v)
        parts = {"preprocess": logdet}
        latents = []
        for i, level in enumerate(self.levels):
            y, _ = level.squeeze(y)  # log-det 0
            for j, step in enumerate(level.steps):
                for name, layer in step.items():
                    y, logdet = layer(y)
                    parts[f"level{i}.step{j}.{name}"] = logdet
            if level.split is not None:
                y, eps, log_p = level.split(y)
                latents.append(eps)
                parts[f"level{i}.split_prior"] = log_p
        eps, log_p = self.prior(y)
        latents.append(eps)
        parts["prior"] = log_p
        return latents, parts

    def decode(self, latents: list[Tensor]) -> Tensor:
        """Inverse of :meth:`encode`: standardised latents -> ``v`` (not clamped)."""
        if len(latents) != len(self.latent_shapes):
            raise ValueError(f"decode expects {len(self.latent_shapes)} latents of shapes {self.latent_shapes}")
        y = self.prior.inverse(latents[-1])
        k = len(latents) - 1
        for level in reversed(self.levels):
            if level.split is not None:
                k -= 1
                y = level.split.inverse(y, latents[k])
            for step in reversed(level.steps):
                for layer in reversed(list(step.values())):
                    y = layer.inverse(y)
            y = level.squeeze.inverse(y)
        return self.preprocess.inverse(y)

    # -- likelihood --------------------------------------------------------------------
    def log_prob_parts(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Every additive contribution ``[B]`` to :meth:`log_prob`, in nats, by name.

        (Named parts, not terms: in flowlib ``terms`` is always the length of a series.)

        ``"discretization"`` (``-D n_bits log 2``), ``"dequantization"`` (``-log q(u | x)``),
        ``"preprocess"``, ``"level{i}.step{j}.{layer}"`` (each layer's log-det),
        ``"level{i}.split_prior"`` (``log p(z2 | z1)``) and ``"prior"`` (the last level's).
        """
        xq = self.quantize_input(x)
        v, log_q = self.dequantize(xq, generator)
        _, parts = self.encode(v)
        discretization = -self.n_dims * self.config.n_bits * math.log(2)
        return {"discretization": torch.full_like(log_q, discretization), "dequantization": -log_q, **parts}

    def log_prob(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Lower bound on ``log P(x)`` in nats, ``[B]`` (one dequantization sample per image)."""
        return torch.stack(list(self.log_prob_parts(x, generator).values())).sum(0)

    def bpd(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Bits per dimension ``-log_prob / (D ln 2)``, ``[B]``."""
        return -self.log_prob(x, generator) / (self.n_dims * math.log(2))

    def forward(self, x: Tensor) -> Tensor:
        """Bits per dimension, ``[B]`` (the training loss is its mean)."""
        return self.bpd(x)

    def log_prob_iw(self, x: Tensor, n_samples: int = 8, generator: torch.Generator | None = None) -> Tensor:
        """Importance-weighted bound ``log mean_k exp(log p(x + u_k) - log q(u_k | x))``, ``[B]``.

        Tighter than :meth:`log_prob` on average (Burda et al. 2016) and exact as ``K -> inf``.
        Loops over the ``K`` samples to keep the memory of one batch.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        samples = torch.stack([self.log_prob(x, generator) for _ in range(n_samples)])  # [K, B]
        return torch.logsumexp(samples, 0) - math.log(n_samples)

    # -- sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images ``uint8 [n, C, H, W]``: decode ``eps ~ N(0, temperature^2)`` and quantize."""
        ref = self.prior.mean
        latents = [
            temperature * torch.randn((n, *shape), generator=generator, dtype=ref.dtype, device=ref.device)
            for shape in self.latent_shapes
        ]
        v = self.decode(latents)
        levels = 2**self.config.n_bits
        q = torch.floor(v.clamp(0, 1) * levels).clamp(0, levels - 1)
        return (q * 2 ** (8 - self.config.n_bits)).to(torch.uint8)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_model(config: ModelConfig | str, **overrides) -> FlowModel:
    """``FlowModel`` from a config or a preset name (:data:`flowlib.presets.PRESETS`), with field overrides.

    >>> model = build_model("tiny")
    >>> model.sample(2).shape
    torch.Size([2, 1, 8, 8])
    """
    if isinstance(config, str):
        from ..presets import preset  # the table imports ModelConfig from this package

        config = preset(config).model
    if not isinstance(config, ModelConfig):
        raise ValueError(f"build_model expects a ModelConfig or a preset name, got {type(config).__name__}")
    return FlowModel(config.replace(**overrides))
