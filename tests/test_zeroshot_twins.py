"""Self-similarity with orientation twins (zero_shot.self_orientations): the turned copies
land back on the query's grid, and a patch whose only twin is a turned copy of another
patch stops scoring as a defect."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomalygpt.models.encoders import ImageEncoder
from anomalygpt.zeroshot.features import oriented_patch_sets
from anomalygpt.zeroshot.self_similarity import self_similarity_scores


class CellEncoder(ImageEncoder):
    """A 4 px grid whose features are the cell's 16 gray pixels in order (orientation-
    sensitive), or their mean (orientation-free) with `mean_only`."""

    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    strides = [4]

    def __init__(self, mean_only: bool = False) -> None:
        super().__init__()
        self.mean_only = mean_only
        self.dims, self.global_dim = [1 if mean_only else 16], 1

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        gray = images.mean(1, keepdim=True)
        cells = F.avg_pool2d(gray, 4) if self.mean_only else F.pixel_unshuffle(gray, 4)
        return [cells + 0.1], gray.mean((2, 3))


@pytest.mark.parametrize("setting", ["rot180", "rot90", "dihedral"])
def test_copies_land_on_their_own_patch(setting: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    feats, copies, hw, _ = oriented_patch_sets(CellEncoder(mean_only=True), images, 32, [1], setting)
    assert hw == (8, 8) and len(copies) == {"rot180": 1, "rot90": 3, "dihedral": 7}[setting]
    for copy in copies:  # a cell's mean does not change when turned: each copy equals the query
        torch.testing.assert_close(copy[0], feats[0])


def corner_image(bottom_right_turned: bool) -> torch.Tensor:
    img = torch.full((1, 3, 32, 32), 0.5)
    img[..., 0, 0] = 1.0                      # a mark in the top-left cell, at its top-left pixel
    img[..., 31, 31 if bottom_right_turned else 28] = 1.0  # the same cell turned by 180, or not
    return img


def test_a_turned_twin_is_found_only_with_copies() -> None:
    enc = CellEncoder()
    for turned in (True, False):
        feats, copies, (h, w), _ = oriented_patch_sets(enc, corner_image(turned), 32, [1], "rot180")
        plain = self_similarity_scores(feats[0], h, w, 1)
        twins = self_similarity_scores(feats[0], h, w, 1, [c[0] for c in copies])
        assert plain[0, 0, 0, 0] > 0.01            # no upright twin anywhere in the image
        if turned:                                 # the bottom-right cell is the corner turned by 180
            assert twins[0, 0, 0, 0] < 1e-5
        else:                                      # a different mark: no twin in any orientation
            assert twins[0, 0, 0, 0] > 0.01
        assert (twins <= plain + 1e-6).all()       # copies only add candidates


def test_copies_must_match_the_query_shape() -> None:
    feats = F.normalize(torch.rand(1, 64, 4), dim=-1)
    with pytest.raises(ValueError, match="copy"):
        self_similarity_scores(feats, 8, 8, 1, [feats[:, :32]])
