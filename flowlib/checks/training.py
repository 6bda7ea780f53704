"""Checkers for ``lessons/05_cifar10_exercises.ipynb``: bits per dimension.

>>> import math
>>> from flowlib.checks.training import check_bits_per_dim
>>> check_bits_per_dim(lambda log_p, dims: -log_p / (dims * math.log(2))).ok
True
"""

from __future__ import annotations

import math

import torch

from . import Case, Feedback, run_cases

__all__ = ["check_bits_per_dim", "check_bpd_from_density", "check_histogram_bpd"]

F64 = torch.float64
LN2 = math.log(2)


def check_bits_per_dim(fn) -> Feedback:
    """Exercise: ``fn(log_p, dims)``: bits/dim of a log-likelihood ``log_p`` (nats, ``[B]``) of ``dims``-D images."""
    cases = []
    for dims, values in [(3 * 32 * 32, [-7000.0, -6500.5]), (64, [-180.0, -95.25, -300.0])]:
        log_p = torch.tensor(values, dtype=F64)
        cases.append(
            Case(
                f"log_p = {values} nats with D = {dims}",
                (log_p, dims),
                -log_p / (dims * LN2),
                [
                    ("you returned nats per dimension: divide by ln 2 to get bits", -log_p / dims),
                    ("sign error: bits/dim is the *negative* log-likelihood per dimension", log_p / (dims * LN2)),
                    ("you forgot to divide by the number of dimensions D", -log_p / LN2),
                    ("you divided by log10(2); bits need ln 2 = log(2)", -log_p / (dims * math.log10(2))),
                    (
                        "you multiplied by ln 2; nats become bits by dividing by ln 2 (1 nat = 1.44 bits)",
                        -log_p * LN2 / dims,
                    ),
                ],
            )
        )
    return run_cases(
        "bits_per_dim",
        fn,
        cases,
        hint="Two conversions: from nats to bits (how are ln and log2 related?) and from a whole image to one "
        "dimension. Mind the sign: a likelihood is not a cost.",
        success="bits/dim = -log_p / (D ln 2).",
    )


def check_bpd_from_density(fn) -> Feedback:
    """Exercise: ``fn(log_density, dims)``: bpd of discrete images from ``log p(v)`` of ``v = (x + u) / 256``."""
    cases = []
    for dims, values in [(3 * 32 * 32, [3500.0, 4100.0]), (64, [40.0, -12.5])]:
        log_v = torch.tensor(values, dtype=F64)
        right = -(log_v - dims * math.log(256)) / (dims * LN2)
        cases.append(
            Case(
                f"log p(v) = {values} nats with D = {dims}",
                (log_v, dims),
                right,
                [
                    (
                        "you forgot the -D log 256 of the rescaling v = (x + u) / 256 (you are 8 bits/dim too low)",
                        -log_v / (dims * LN2),
                    ),
                    ("the rescaling term has the wrong sign: log P(x) >= log p(v) - D log 256", right - 16),
                    (
                        "you used 255 levels; 8-bit images have 256 values, and v = (x + u) / 256",
                        -(log_v - dims * math.log(255)) / (dims * LN2),
                    ),
                    ("you returned nats per dimension: divide by ln 2", -(log_v - dims * math.log(256)) / dims),
                    (
                        "the rescaling costs log 256 per dimension: D log 256 in all, not log 256",
                        -(log_v - math.log(256)) / (dims * LN2),
                    ),
                    (
                        "you subtracted D log2(256) = 8 D (bits) from a log-density in nats; the Jacobian term is "
                        "D ln 256 nats",
                        -(log_v - dims * 8) / (dims * LN2),
                    ),
                    (
                        "you mixed units: 8 is in bits per dimension, log p(v) / D in nats; divide the log-density "
                        "by D ln 2 before adding 8",
                        8 - log_v / dims,
                    ),
                    (
                        "sign error: bits/dim is the *negative* log-likelihood per dimension (a cost, >= 0 for "
                        "discrete data)",
                        -right,
                    ),
                ],
            )
        )
    return run_cases(
        "bpd_from_density",
        fn,
        cases,
        hint="Change of variables: a density of v = (x + u) / 256 and a density of x + u differ by the "
        "log-determinant of the rescaling. Then convert as in exercise 1.",
        success="bpd = -(log p(v) - D log 256) / (D ln 2) = 8 - log p(v) / (D ln 2).",
    )


def check_histogram_bpd(fn) -> Feedback:
    """Exercise: ``fn(images, probs)``: mean bpd of uint8 ``images`` under independent pixels with ``probs[256]``."""
    cases = []
    for shape, seed in [((4, 3, 5, 5), 0), ((2, 1, 8, 8), 1)]:
        g = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        counts = torch.rand(256, generator=g, dtype=F64) + 0.05
        probs = counts / counts.sum()
        nll = -torch.log2(probs[images.long()])  # bits per pixel value
        cases.append(
            Case(
                f"{shape[0]} random uint8 images of shape {list(shape[1:])} and a random histogram",
                (images, probs),
                nll.mean(),
                errors=[
                    (
                        IndexError,
                        "Indexing with a uint8 (or bool) tensor selects by mask in torch; to look values up, "
                        "index with integer indices (images.long())",
                    )
                ],
                mistakes=[
                    ("you used the natural log (nats); bits need log2", (nll * LN2).mean()),
                    (
                        "you summed over the pixels instead of averaging (bits per image, not per dimension)",
                        nll.flatten(1).sum(1).mean(),
                    ),
                    ("sign error: bits/dim is -log2 p", -nll.mean()),
                ],
            )
        )
    return run_cases(
        "histogram_bpd",
        fn,
        cases,
        hint="How many bits does it cost to encode a value of probability p? Average that cost over every "
        "pixel value of every image.",
        success="Under independent pixels, bpd is the mean of -log2 p(pixel value).",
    )
