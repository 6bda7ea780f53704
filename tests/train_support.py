"""The small trainer run every trainer test starts from: the ``tiny`` preset on the embedded digits."""

from flowlib.train import TrainConfig

BASE = dict(
    dataset="digits",
    steps=6,
    batch_size=32,
    log_every=2,
    eval_every=3,
    save_every=3,
    eval_images=64,
    n_samples=4,
    temperatures=(1.0,),
    progress=False,
)


def tiny_config(out, **overrides) -> TrainConfig:
    """``TrainConfig`` of the ``tiny`` preset on digits for a few seconds of CPU, writing to ``out``."""
    return TrainConfig.for_preset("tiny", **{**BASE, "out": str(out), **overrides})
