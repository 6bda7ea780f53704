"""Plain-value configuration of the multi-scale image flow.

``ModelConfig`` holds only JSON-serialisable fields (``dataclasses.asdict`` gives a
dict a checkpoint can store); the named sizes (paper, small, tiny) are :mod:`flowlib.presets`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .. import layers

__all__ = ["ModelConfig", "CHOICES", "MODEL_TYPES", "COUPLINGS", "MIXINGS", "LAYOUTS", "DEQUANT_ENCODERS"]

MODEL_TYPES = ("glow", "sylvester", "residual", "coupling")
# config name -> registered layer name, from the registry's coupling layers ("affine" -> "affine_coupling")
COUPLINGS = {name.removesuffix("_coupling"): name for name in layers.available("coupling")}
MIXINGS = (*layers.available("mixing"), "none")  # the registry's mixing layers, or none
LAYOUTS = ("glow", "official")
DEQUANT_ENCODERS = ("conv", "densenet")
# The allowed values of every choice field (validate() and the command-line flags use it).
CHOICES: dict[str, tuple] = {
    "model_type": MODEL_TYPES,
    "mixing": MIXINGS,
    "dequant_mixing": (*MIXINGS, "same"),
    "layout": LAYOUTS,
    "dequant_encoder": DEQUANT_ENCODERS,
    "coupling": tuple(COUPLINGS),
    "net": ("conv", "densenet"),
    "dequant": ("uniform", "flow"),
    "preprocess": ("centered", "logit"),
}


@dataclass
class ModelConfig:
    """Architecture of a :class:`flowlib.models.FlowModel`; every field is a plain value.

    Structure: ``dequantize -> preprocess -> n_levels x [squeeze, n_subflows steps,
    split (all levels but the last)] -> prior``. A step is, by ``model_type``:

    * ``"glow"``: [actnorm] -> ``mixing`` (a registered layer name, or ``"none"``: then
      the couplings alternate which half they transform) -> ``coupling`` with
      ``layout="glow"`` (Kingma & Dhariwal's order); with ``layout="official"`` (the
      order of Hoogeboom et al.'s code) one extra mixing layer right after the first
      squeeze (``level0.step0.first_mixing``), then each step is [actnorm] -> ``coupling``
      -> ``mixing``, so a mixing layer precedes every split and the final prior.
    * ``"coupling"``: the paper's coupling baseline: [actnorm] -> ``conv1x1`` -> ``coupling``
      (``mixing`` and ``layout`` are ignored; with ``net="conv"`` it is the 3x3-1x1-3x3
      conditioner of Hoogeboom et al.'s "Baseline Coupling Flow").
    * ``"sylvester"``: [actnorm] -> convolutional Sylvester layer -> spatial flip (as in
      the paper's model).
    * ``"residual"``: [actnorm] -> residual block.

    ``actnorm``: start every step with an actnorm layer (Glow; flowlib's default). The
    official mixing model has none (``paper-mixing`` sets ``False``).
    ``convexp_bias``: per-pixel biases ``[C, H, W]`` before and after every ``convexp``
    mixing layer, main flow and dequantizer (:func:`flowlib.models.mixing.make_mixing`;
    the official ``ConvExp`` module has them, the other official mixing layers do not).

    ``hidden_channels`` is the width of ``net="conv"`` conditioners and the ``hidden``
    argument of the ``sylvester`` / ``residual`` layers (the 528 internal channels of the
    official ``paper-sylvester`` model).

    Conditioners (couplings, split priors, the dequantization flow) are
    :func:`flowlib.nets.make_net` networks: ``net="conv"`` uses ``hidden_channels``;
    ``net="densenet"`` uses ``densenet_depth``, ``densenet_growth``,
    ``n_intermediate_channels`` and ``gated_conv``.

    ``split_prior=True``: each factored-out half ``z2`` gets a learned conditional
    Gaussian ``N(mu(z1), sigma(z1))``; ``False``: a standard normal.
    ``dequant="uniform"``: ``x + U[0, 1)``; ``"flow"``: variational dequantization with
    ``dequant_subflows`` conditional couplings, a ``dequant_context``-channel image
    encoder (``dequant_encoder``: ``"conv"``, flowlib's small 3-layer CNN, or
    ``"densenet"``, the official dense block - stride-2 conv - dense block, ~230 k
    parameters at 32 channels) and ``dequant_mixing`` after each coupling (and one more
    before the first with ``layout="official"``); ``dequant_mixing="same"`` uses the
    model's ``mixing`` there, as the official code (``paper-mixing``).
    ``preprocess="centered"``: ``v - 1/2``; ``"logit"``: ``logit(a + (1 - 2a) v)``, ``a = logit_alpha``.
    ``learned_prior``: per-channel mean and scale of the final Gaussian (zero-initialised).
    ``mixing_kwargs``: extra keyword arguments for every ``mixing`` layer of the model,
    including the dequantizer's when it uses the same layer (so one setting, e.g.
    ``{"kernel_size": 5}``, reaches every convexp layer); ``dequant_mixing_kwargs`` are
    added to (and override) them for the dequantizer's mixing layers only.
    """

    model_type: str = "glow"
    image_shape: tuple[int, int, int] = (3, 32, 32)
    n_levels: int = 2
    n_subflows: int = 10
    mixing: str = "convexp"
    coupling: str = "affine"
    net: str = "densenet"
    hidden_channels: int = 512
    densenet_depth: int = 8
    densenet_growth: int = 64
    n_intermediate_channels: int = 64
    gated_conv: bool = True
    split_prior: bool = True
    dequant: str = "flow"
    n_bits: int = 8
    preprocess: str = "centered"
    logit_alpha: float = 0.05
    learned_prior: bool = True
    dequant_subflows: int = 4
    dequant_context: int = 32
    dequant_mixing: str = "conv1x1"
    mixing_kwargs: dict = field(default_factory=dict)
    actnorm: bool = True
    layout: str = "glow"
    convexp_bias: bool = False
    dequant_encoder: str = "conv"
    dequant_mixing_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)  # JSON gives a list back
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and its allowed values."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not 1 <= self.n_bits <= 8:
            raise ValueError(f"n_bits must be in 1..8 (the data is uint8), got {self.n_bits}")
        if not 0 < self.logit_alpha < 0.5:
            raise ValueError(f"logit_alpha must be in (0, 0.5), got {self.logit_alpha}")
        if self.n_levels < 1 or self.n_subflows < 1:
            raise ValueError(f"n_levels and n_subflows must be >= 1, got {self.n_levels}, {self.n_subflows}")
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape}")
        C, H, W = self.image_shape
        factor = 2**self.n_levels
        if H % factor or W % factor:
            raise ValueError(
                f"image_shape {self.image_shape}: H and W must be divisible by 2**n_levels = {factor} "
                f"(each level squeezes 2x2); use fewer levels or pad the images."
            )

    def net_kwargs(self) -> dict:
        """The :func:`flowlib.nets.make_net` keyword arguments of ``net``."""
        if self.net == "conv":
            return {"hidden": self.hidden_channels}
        return {
            "depth": self.densenet_depth,
            "growth": self.densenet_growth,
            "intermediate": self.n_intermediate_channels,
            "gated": self.gated_conv,
        }

    def dequant_mixing_layer(self) -> str:
        """The dequantizer's mixing layer name (``dequant_mixing``, with ``"same"`` resolved to ``mixing``)."""
        return self.mixing if self.dequant_mixing == "same" else self.dequant_mixing

    def dequant_mixing_options(self) -> dict:
        """Keyword arguments of the dequantizer's mixing layers (see ``mixing_kwargs``)."""
        shared = self.mixing_kwargs if self.dequant_mixing_layer() == self.mixing else {}
        return {**shared, **self.dequant_mixing_kwargs}

    def replace(self, **overrides) -> ModelConfig:
        """A copy with ``overrides`` applied; unknown names raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; fields are {sorted(names)}")
        return dataclasses.replace(self, **overrides)
