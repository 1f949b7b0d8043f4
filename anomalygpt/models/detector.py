"""Detector: frozen encoder + trained PatchDecoder, fused with the few-shot reference map.

Pure torch, no I/O. Images come in as float tensors in 0..1 (B x 3 x H x W) at the
encoder's size; preprocessing of files lives in `anomalygpt.images`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .decoder import PatchDecoder
from .encoders import ImageEncoder
from .hires import combine, fine_canvas, paste_tiles, split_fine, tile_boxes
from .memory_bank import MemoryBank
from .orientations import orientation_copies


@dataclass
class Detection:
    anomaly_map: torch.Tensor          # B x 1 x H x W, fused map used for the verdict
    decoder_map: torch.Tensor          # B x 1 x H x W, decoder probability
    reference_map: torch.Tensor | None  # B x 1 x H x W, raw few-shot map (None without refs)
    level_logits: list[torch.Tensor]   # per level B x 1 x h x w (training targets live here)
    global_emb: torch.Tensor           # B x D
    scores: torch.Tensor               # B, image-level anomaly score
    dist_scores: torch.Tensor | None = None  # B, distribution score against the references (None without)


@dataclass
class FineFeatures:
    """Encoder maps of the fine level's inputs (models/hires.py) for a batch of images:
    `maps` per level holds every tile of every image, image i owning rows spans[i]."""
    maps: list[torch.Tensor]
    spans: list[tuple[int, int]]
    boxes: list[list[tuple[int, int]]]
    tiles: list[int]
    canvases: list[tuple[int, int]]

    def image(self, i: int) -> list[torch.Tensor]:
        a, b = self.spans[i]
        return [m[a:b] for m in self.maps]

    def subset(self, i: int) -> "FineFeatures":
        """The features of image i alone (leave-one-out scores one reference at a time)."""
        n = self.spans[i][1] - self.spans[i][0]
        return FineFeatures(self.image(i), [(0, n)], [self.boxes[i]], [self.tiles[i]], [self.canvases[i]])


def keep_share(total: int, cap: int) -> float:
    """Share of patches a bank keeps on the way in: all of them while `total` is within twice
    the cap (0 = no cap), else twice the cap's share, so the final subsample to the cap still
    has rows from every batch to choose from."""
    return 1.0 if cap <= 0 or total <= 2 * cap else 2 * cap / total


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of B x 1 x H x W maps: a defect is a region, not one pixel."""
    if sigma <= 0:
        return x
    k = int(4 * sigma) | 1
    ax = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    g = torch.exp(-ax ** 2 / (2 * sigma * sigma))
    g = g / g.sum()
    x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, k // 2, k // 2), mode="reflect"), g.view(1, 1, -1, 1))


class Detector(nn.Module):
    def __init__(self, cfg: ModelConfig, encoder: ImageEncoder, anchor_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.decoder = PatchDecoder(encoder.dims, anchor_dim, cfg.decoder.temperature, cfg.decoder.pool)
        # Spread (std) of image scores on held-out normal images, of the decoder map and of
        # the reference map: set by calibration. Dividing by them puts both maps in "normal
        # spread" units, so fusing them needs no hand-tuned weight per product.
        self.register_buffer("dec_scale", torch.tensor(1.0))
        self.register_buffer("ref_scale", torch.tensor(1.0))
        self.smooth_sigma = cfg.encoder.image_size / 56.0

    @property
    def image_size(self) -> int:
        return self.cfg.encoder.image_size

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()} | {
            "dec_scale": self.dec_scale, "ref_scale": self.ref_scale}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.decoder.load_state_dict({k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")})
        for name in ("dec_scale", "ref_scale"):
            if name in sd:
                getattr(self, name).copy_(sd[name])

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.encoder(images)

    @property
    def hires(self) -> str:
        return self.cfg.memory.hires

    def fine_fallback(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Fine-level inputs made from encoder-size images, for callers without the original
        pixels (bench, calibration): resized to the fine canvas. Callers that have the
        original image pass anomalygpt.images.fine_tensor instead (real pixels for "tiles")."""
        h, w = fine_canvas(images.shape[-2], images.shape[-1], self.hires, self.image_size)
        if (h, w) == tuple(images.shape[-2:]):
            return list(images)
        return list(F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False))

    def encode_fine(self, fine: list[torch.Tensor], batch_size: int = 16) -> FineFeatures:
        """Encode the fine level's inputs (one C x H x W tensor per image): the whole 2x image,
        or its overlapping tiles, in batches of `batch_size` encoder inputs."""
        inputs, spans, boxes, tiles, canvases, n = [], [], [], [], [], 0
        for img in fine:
            x, bx, t = split_fine(img, self.hires, self.image_size)
            inputs.append(x); boxes.append(bx); tiles.append(t); canvases.append((img.shape[-2], img.shape[-1]))
            spans.append((n, n + len(x))); n += len(x)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):  # inputs of one shape are encoded together
            groups.setdefault(tuple(x.shape[1:]), []).append(i)
        per_image: list[list[torch.Tensor] | None] = [None] * len(inputs)
        for idx in groups.values():
            x = torch.cat([inputs[i] for i in idx])
            outs = [self.encode(x[j:j + batch_size])[0] for j in range(0, len(x), batch_size)]
            maps = [torch.cat([o[level] for o in outs]) for level in range(len(outs[0]))]
            k = 0
            for i in idx:
                c = len(inputs[i])
                per_image[i] = [m[k:k + c] for m in maps]
                k += c
        maps = [torch.cat([p[level] for p in per_image]) for level in range(len(per_image[0]))]
        if self.cfg.memory.hires_levels == "finest":
            maps = [max(maps, key=lambda m: m.shape[-2] * m.shape[-1])]
        return FineFeatures(maps, spans, boxes, tiles, canvases)

    def fine_map(self, feats: FineFeatures, bank: MemoryBank, size: tuple[int, int]) -> torch.Tensor:
        """B x 1 x size fine reference map: each tile scored against the fine bank, pasted on
        its image's canvas (overlaps averaged) and resized to the output grid."""
        out = []
        for i in range(len(feats.spans)):
            tile_maps = bank.score(feats.image(i))
            canvas = paste_tiles(tile_maps, feats.boxes[i], feats.tiles[i], feats.canvases[i])
            out.append(F.interpolate(canvas, size=size, mode="bilinear", align_corners=False))
        return torch.cat(out)

    def _add_fine(self, bank: MemoryBank, fine: list[torch.Tensor], turns, keep_cap: int) -> None:
        """The fine bank: every reference's fine inputs in each orientation, under the cap."""
        m = self.cfg.memory
        stride, size = min(self.encoder.strides), self.image_size
        per_image = []
        for img in fine:
            h, w = img.shape[-2:]
            n_tiles, side = (1, max(h, w)) if self.hires == "2x" else (len(tile_boxes(h, w, size)), size)
            per_image.append(n_tiles * (-(-side // stride)) ** 2)
        total = sum(per_image) * len(turns)
        keep = keep_share(total, keep_cap)
        fb = MemoryBank(m.hires_pool, m.chunk, m.max_patches, m.stat_grid)
        step = 0
        for i, img in enumerate(fine):
            for turn in turns:
                feats = self.encode_fine([turn(img)])
                n = feats.spans[0][1] - feats.spans[0][0]
                fb.add(feats.maps, torch.full((n,), i), keep=keep, seed=10_000 + step)
                step += 1
        fb.subsample()
        bank.fine = fb

    def build_bank(self, references: torch.Tensor, batch_size: int = 16,
                   fine: list[torch.Tensor] | None = None) -> MemoryBank:
        """Memory bank from normal reference images (N x 3 x H x W) and their orientation
        copies (memory.orientations), subsampled to the cap. When the copies would hold
        more than twice the cap, each batch keeps only its share on the way in. With
        memory.hires on, also the fine bank, from `fine` (one fine-level input per
        reference, anomalygpt.images.fine_tensor) or else from `fine_fallback`."""
        m = self.cfg.memory
        bank = MemoryBank(m.pool, m.chunk, m.max_patches, m.stat_grid)
        turns = orientation_copies(m.orientations)
        side = -(-self.image_size // min(self.encoder.strides))  # finest grid of the encoder
        total = len(references) * len(turns) * side * side
        keep = keep_share(total, m.max_patches)
        step = 0
        for i in range(0, len(references), batch_size):
            batch = references[i:i + batch_size]
            owners = torch.arange(i, i + len(batch))
            for turn in turns:
                maps, _ = self.encode(turn(batch))
                bank.add(maps, owners, keep=keep, seed=step)
                step += 1
        bank.subsample()
        if self.hires != "off":
            self._add_fine(bank, fine if fine is not None else self.fine_fallback(references), turns, m.max_patches)
        return bank

    def reference_map(self, maps: list[torch.Tensor], bank: MemoryBank, size: tuple[int, int],
                      fine: FineFeatures | None = None) -> torch.Tensor:
        """Raw few-shot map: 1 - max cosine of each patch's multi-level feature to the
        references; with the fine level's features and a fine bank, combined with the fine
        map (memory.hires_fusion, models/hires.py)."""
        ref = F.interpolate(bank.score(maps), size=size, mode="bilinear", align_corners=False)
        if fine is None or bank.fine is None or self.hires == "off":
            return ref
        m = self.cfg.memory
        return combine(ref, self.fine_map(fine, bank.fine, size), m.hires_fusion, m.hires_weight)

    def fuse(self, dec_map: torch.Tensor, ref_map: torch.Tensor, ref_scale: float | None = None) -> torch.Tensor:
        """Weighted sum of the two maps, each divided by its normal spread (see dec_scale).

        `ref_scale`: the reference map's spread measured on the reference set in use (its
        leave-one-out scores); the reference map shrinks as references are added, so a
        scale measured with 4 references would underweight a bank of hundreds.
        """
        w = self.cfg.memory.weight
        rs = ref_scale if ref_scale is not None else float(self.ref_scale)
        return (1 - w) * dec_map / self.dec_scale.clamp_min(1e-6) + w * ref_map / max(rs, 1e-6)

    def image_score(self, amap: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(amap, self.smooth_sigma).flatten(1).amax(1)

    def dist_term(self, dist: torch.Tensor) -> torch.Tensor:
        """What the distribution score adds to the map's max: dist_weight x how far its log
        lies above dist_floor (a hinge: within the normal range of the references it adds
        nothing, so local defects keep the map's ranking; see MemoryConfig)."""
        m = self.cfg.memory
        return m.dist_weight * (torch.log(dist.clamp_min(1e-6)) - math.log(m.dist_floor)).clamp_min(0)

    def distribution(self, maps: list[torch.Tensor], bank: MemoryBank) -> torch.Tensor | None:
        """Each image's distribution score against `bank` (None when memory.dist_weight is 0: off)."""
        if self.cfg.memory.dist_weight <= 0:
            return None
        return bank.distribution_score(maps, self.cfg.memory.dist_shrink)

    def total_score(self, fused: torch.Tensor, dist: torch.Tensor | None) -> torch.Tensor:
        """The image score: the smoothed map's max, plus the distribution term when there is
        one. Queries and the leave-one-out threshold both score through here."""
        scores = self.image_score(fused)
        return scores if dist is None else scores + self.dist_term(dist)

    def forward(self, images: torch.Tensor, bank: MemoryBank | None = None, ref_scale: float | None = None,
                fine: list[torch.Tensor] | None = None) -> Detection:
        """`fine`: the fine-level inputs of the images (anomalygpt.images.fine_tensor), used
        when memory.hires is on and the bank has a fine level (else `fine_fallback`)."""
        maps, glob = self.encode(images)
        feats = None
        if bank is not None and bank.fine is not None and self.hires != "off":
            feats = self.encode_fine(fine if fine is not None else self.fine_fallback(images))
        return self.detect_features(maps, glob, (images.shape[-2], images.shape[-1]), bank, ref_scale, feats)

    def detect_features(self, maps: list[torch.Tensor], glob: torch.Tensor, size: tuple[int, int],
                        bank: MemoryBank | None = None, ref_scale: float | None = None,
                        fine: FineFeatures | None = None) -> Detection:
        """Decoder map, fused with the reference map when a bank is given, from encoder outputs."""
        dec_map, logits = self.decoder(maps, size)
        ref, dist = None, None
        fused = dec_map
        if bank is not None and len(bank):
            ref = self.reference_map(maps, bank, size, fine)
            fused = self.fuse(dec_map, ref, ref_scale)
            dist = self.distribution(maps, bank)
        return Detection(fused, dec_map, ref, logits, glob, self.total_score(fused, dist), dist)
