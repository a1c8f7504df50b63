"""Augmentation of whole training batches on their device, with seeded draws: a batch's changes
are a function of its generator alone, so a resumed epoch augments its batches as before."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mnistlab.options import Augment

MAX_SHIFT = 2  # pixels, for shift and affine
MAX_DEGREES = 10.0  # affine's rotation
MAX_SCALE = 0.1  # affine's zoom in or out, as a fraction


def augment(images: Tensor, kind: Augment, generator: torch.Generator) -> Tensor:
    """Shift (by whole pixels) or warp (rotate, scale, shift) each image of a float batch
    (B x C x H x W, black = 0); the random draws come from `generator` (a CPU generator)."""
    kind = Augment(kind)
    if kind is Augment.none:
        return images
    n, _, height, width = images.shape
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n, 2), generator=generator).float()
    # affine_grid's coordinates run from -1 to 1 across the image: one pixel is 2 / size
    tx, ty = shifts[:, 0] * 2 / width, shifts[:, 1] * 2 / height
    if kind is Augment.shift:
        angle, scale = torch.zeros(n), torch.ones(n)
    else:
        draws = torch.rand(n, 2, generator=generator) * 2 - 1
        angle = draws[:, 0] * math.radians(MAX_DEGREES)
        scale = 1 + draws[:, 1] * MAX_SCALE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    mode = "nearest" if kind is Augment.shift else "bilinear"
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
