"""Orientation copies of reference images: parts photographed turned or mirrored.

Why: a memory bank only knows the references as photographed. A part that lies turned by
90 degrees (or mirrored) is still a good part, but each of its patches then meets no close
neighbour and the whole image scores as a defect: on ELPV most mono false alarms at 4 shots
were cells turned by 90 degrees against the references. Adding the turned / mirrored copies
of the references to the bank makes the match orientation-free, for products where that is
right (solar cells, most textures); a part whose orientation is itself checked ("the label
must be upright") keeps "none".

    none      the references as photographed
    rot180    + turned by 180 degrees
    rot90     + turned by 90, 180, 270 degrees
    dihedral  + the mirror image of each of the four (8 copies)
"""
from __future__ import annotations

from typing import Callable

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]


def _rot(k: int) -> Transform:
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def _rot_flip(k: int) -> Transform:
    return lambda x: torch.rot90(x.flip(-1), k, dims=(-2, -1))


ORIENTATIONS: dict[str, tuple[Transform, ...]] = {
    "none": (_rot(0),),
    "rot180": (_rot(0), _rot(2)),
    "rot90": tuple(_rot(k) for k in range(4)),
    "dihedral": tuple(_rot(k) for k in range(4)) + tuple(_rot_flip(k) for k in range(4)),
}


def orientation_copies(name: str) -> tuple[Transform, ...]:
    """The transforms (identity first) of an orientation setting, applied to B x C x H x W."""
    try:
        return ORIENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown orientation setting {name!r}; use one of {', '.join(ORIENTATIONS)}") from None
