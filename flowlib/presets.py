"""The named sizes of the image flow: one entry per name, holding the model and its training schedule.

A preset is a :class:`Preset`: the architecture (:class:`flowlib.models.ModelConfig`) and the
defaults of :class:`flowlib.train.TrainConfig` that go with it. ``build_model("tiny")``,
``TrainConfig.for_preset("tiny")``, ``--preset tiny`` on the command line and the benchmarks all
read this table and nothing else.

>>> sorted(PRESETS)
['paper-mixing', 'paper-residual', 'paper-sylvester', 'small-mixing', 'small-sylvester', 'tiny']
>>> preset("tiny").model.image_shape, preset("tiny").train["batch_size"]
((1, 8, 8), 64)

Training schedules follow the official code (Hoogeboom et al. 2020, ``main_experiment.py``):
Adamax(lr=1e-3, eps=1e-7), batch 256, a LambdaLR factor ``min(1, (epoch+1)/10) * 0.995**epoch``
stepped once per epoch, gradient-norm clipping at 1 only in the Sylvester / residual
experiments. The paper presets evaluate with 1000 importance samples; tiny and small keep the
cheap default.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .models.config import ModelConfig

__all__ = ["Preset", "PRESETS", "preset"]


@dataclass(frozen=True)
class Preset:
    """A model and its training schedule (``train``: :class:`flowlib.train.TrainConfig` field defaults)."""

    model: ModelConfig
    train: dict = field(default_factory=dict)


_PAPER_SCHEDULE = dict(batch_size=256, lr=1e-3, warmup_epochs=10.0, lr_decay=0.995, eval_every=2000, save_every=1000)
_SMALL_SCHEDULE = dict(batch_size=128, lr=1e-3, warmup_epochs=1.0, lr_decay=0.99, eval_every=1000, save_every=500)

# Residual-transformation experiments (experiment_sylvester_network.py): 3 levels x 16 subflows,
# 528 internal channels; split priors / dequantizer use the script's default (ungated) densenet
# conditioner, and its dequantizer the dense-block context encoder and a first mixing layer
# (layout "official"; the Sylvester steps themselves are unchanged).
_PAPER_SYLVESTER = Preset(
    model=ModelConfig(
        model_type="sylvester",
        image_shape=(3, 32, 32),
        n_levels=3,
        n_subflows=16,
        hidden_channels=528,
        net="densenet",
        densenet_depth=8,
        densenet_growth=64,
        n_intermediate_channels=64,
        gated_conv=False,
        split_prior=True,
        dequant="flow",
        mixing="none",
        dequant_mixing="conv1x1",
        layout="official",
        dequant_encoder="densenet",
    ),
    train=dict(_PAPER_SCHEDULE, grad_clip=1.0, iw_samples=1000),
)

PRESETS: dict[str, Preset] = {
    # Hoogeboom et al. 2020, mixing experiments (main_experiment.py): 2 levels x 10 subflows,
    # densenet depth 8, n_intermediate_channels 64, gated convs, split prior, flow dequant,
    # and the official model's layout: a first mixing layer, coupling -> mixing steps, no
    # actnorm, per-pixel biases around convexp, the dense-block context encoder: 55.91 M
    # parameters with convexp, as the official code (tests/test_models.py counts them).
    # The official commands use growth 64 for 1x1 and 63 for convexp/emerging/woodbury (to
    # equalise parameter counts): this preset's default mixing is convexp, so 63; pass
    # densenet_growth=64 together with mixing="conv1x1". The dequantizer mixes with the
    # model's own mixing layer (dequant_mixing="same"), as the official code.
    "paper-mixing": Preset(
        model=ModelConfig(
            model_type="glow",
            image_shape=(3, 32, 32),
            n_levels=2,
            n_subflows=10,
            mixing="convexp",
            coupling="affine",
            net="densenet",
            densenet_depth=8,
            densenet_growth=63,
            n_intermediate_channels=64,
            gated_conv=True,
            split_prior=True,
            dequant="flow",
            dequant_subflows=4,
            dequant_context=32,
            dequant_mixing="same",
            actnorm=False,
            layout="official",
            convexp_bias=True,
            dequant_encoder="densenet",
        ),
        train=dict(_PAPER_SCHEDULE, iw_samples=1000),
    ),
    "paper-sylvester": _PAPER_SYLVESTER,
    # The residual-flow arm of the same experiment: identical sizes and schedule, residual blocks
    # instead of Sylvester layers.
    "paper-residual": Preset(_PAPER_SYLVESTER.model.replace(model_type="residual"), _PAPER_SYLVESTER.train),
    # Minutes on one GPU.
    "small-mixing": Preset(
        model=ModelConfig(
            model_type="glow",
            image_shape=(3, 32, 32),
            n_levels=2,
            n_subflows=4,
            mixing="convexp",
            net="densenet",
            densenet_depth=4,
            densenet_growth=32,
            n_intermediate_channels=48,
            gated_conv=True,
            split_prior=True,
            dequant="flow",
            dequant_subflows=2,
            dequant_context=16,
            dequant_mixing="conv1x1",
        ),
        train=_SMALL_SCHEDULE,
    ),
    "small-sylvester": Preset(
        model=ModelConfig(
            model_type="sylvester",
            image_shape=(3, 32, 32),
            n_levels=3,
            n_subflows=4,
            hidden_channels=128,
            net="densenet",
            densenet_depth=4,
            densenet_growth=32,
            n_intermediate_channels=48,
            gated_conv=False,
            split_prior=True,
            dequant="flow",
            mixing="none",
            dequant_subflows=2,
            dequant_context=16,
            dequant_mixing="conv1x1",
        ),
        train=dict(_SMALL_SCHEDULE, grad_clip=1.0),
    ),
    # Seconds on a CPU: 8x8 digits.
    "tiny": Preset(
        model=ModelConfig(
            model_type="glow",
            image_shape=(1, 8, 8),
            n_levels=2,
            n_subflows=2,
            mixing="conv1x1",
            net="conv",
            hidden_channels=32,
            split_prior=True,
            dequant="uniform",
            dequant_subflows=1,
            dequant_context=8,
            dequant_mixing="conv1x1",
        ),
        train=dict(
            batch_size=64,
            lr=1e-2,
            warmup_epochs=1.0,
            lr_decay=0.99,
            eval_every=100,
            save_every=100,
            log_every=10,
            n_samples=36,
        ),
    ),
}


def preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a ``ValueError`` listing the close ones and all."""
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=2)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown preset {name!r}.{hint} Presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
