"""Two-dimensional toy densities: samplers for the small flows of notebooks 01 and 04.

Each sampler draws ``n`` points as a ``[n, 2]`` float tensor, roughly standardised
(mean near 0, spread of a few units), from a ``torch.Generator`` so that notebooks
and tests are reproducible. Everything is generated here: no download.

>>> x = sample("two_moons", 500, generator=torch.Generator().manual_seed(0))
>>> x.shape
torch.Size([500, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["two_moons", "rings", "eight_gaussians", "checkerboard", "SAMPLERS", "sample"]


def _rand(n: int, generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand(n, *shape, generator=generator)


def _randn(n: int, generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.randn(n, *shape, generator=generator)


def two_moons(n: int, noise: float = 0.08, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved half circles (radius 1), centred and scaled to roughly ``[-2, 2]^2``."""
    upper = _rand(n, generator) < 0.5  # [n] which moon
    angle = math.pi * _rand(n, generator)  # [n]
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x - 0.5, y - 0.25], dim=1) * 2.0  # [n, 2]
    return points + noise * 2.0 * _randn(n, generator, 2)


def rings(
    n: int, radii: tuple[float, ...] = (1.0, 2.0, 3.0), noise: float = 0.08, generator: torch.Generator | None = None
) -> Tensor:
    """Concentric circles; each ring gets a share of the points proportional to its radius."""
    r = torch.tensor(radii)
    which = torch.multinomial(r / r.sum(), n, replacement=True, generator=generator)  # [n]
    angle = 2 * math.pi * _rand(n, generator)  # [n]
    radius = r[which] + noise * _randn(n, generator)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)  # [n, 2]


def eight_gaussians(n: int, radius: float = 2.5, std: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """An equal mixture of 8 isotropic Gaussians whose means sit evenly on a circle."""
    which = torch.randint(0, 8, (n,), generator=generator)  # [n]
    angle = which.to(torch.float32) * (2 * math.pi / 8)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # [n, 2]
    return centres + std * _randn(n, generator, 2)


def checkerboard(n: int, squares: int = 4, size: float = 4.0, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the dark squares of a ``squares x squares`` board covering ``[-size/2, size/2]^2``."""
    cell = size / squares
    ij = torch.randint(0, squares, (n, 2), generator=generator)  # [n, 2] cell indices
    ij[:, 1] = (2 * torch.div(ij[:, 1], 2, rounding_mode="floor") + (ij[:, 0] % 2)) % squares  # dark cells only
    return (ij.to(torch.float32) + _rand(n, generator, 2)) * cell - size / 2


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "two_moons": two_moons,
    "rings": rings,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}


def sample(name: str, n: int, generator: torch.Generator | None = None, **kwargs) -> Tensor:
    """Draw ``n`` points from the toy density ``name`` (one of :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown toy density {name!r}; choose one of {sorted(SAMPLERS)}")
    if n < 1:
        raise ValueError(f"sample needs n >= 1 points, got n={n}")
    return SAMPLERS[name](n, generator=generator, **kwargs)
