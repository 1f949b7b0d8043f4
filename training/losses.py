"""Segmentation losses for the patch decoder: focal + dice, at every feature level and on the
fused map.

Why both: simulated anomalies cover a few percent of the pixels, so plain BCE is dominated by
easy normal pixels. Focal loss down-weights the pixels the decoder already gets right; dice is
a per-image overlap score that does not care how many normal pixels there are, so small
defects count as much as large ones. AnomalyGPT trains its decoder with the same pair.

Why every level: the fused map is an average of upsampled level maps, so a loss on it alone
lets one level compensate for another. Supervising each level's logits at its own resolution
(with the mask area-downsampled, i.e. the share of anomalous pixels in each patch as a soft
target) makes every level a detector on its own, and the fused term keeps the combination
sharp at full resolution.

Pure torch, no I/O; all functions take B x 1 x H x W tensors and return scalars.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-6


def _focal_from_logs(log_p: Tensor, log_q: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Focal loss given log(p) and log(1-p); `target` may be soft (0..1).

    bce = -(t log p + (1-t) log(1-p)); p_t = t p + (1-t)(1-p); loss = (1-p_t)^gamma * bce.
    With a soft target p_t is the expected agreement, so a patch that is 30% defect is
    neither pushed fully to 0 nor to 1.
    """
    bce = -(target * log_p + (1 - target) * log_q)
    p = log_p.exp()
    p_t = target * p + (1 - target) * (1 - p)
    return ((1 - p_t).clamp_min(0) ** gamma * bce).mean()


def focal_loss_with_logits(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Focal loss on logits (stable: log-sigmoid, never log of a rounded probability)."""
    logits = logits.float()
    return _focal_from_logs(F.logsigmoid(logits), F.logsigmoid(-logits), target.float(), gamma)


def focal_loss_on_probs(prob: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Focal loss on probabilities (the fused map is an average of sigmoids, not a logit)."""
    p = prob.float().clamp(_EPS, 1 - _EPS)
    return _focal_from_logs(p.log(), (1 - p).log(), target.float(), gamma)


def dice_loss(prob: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft dice per image, averaged over the batch.

    `smooth` keeps the loss defined on normal images (empty target): there it is
    1 - smooth / (sum p + smooth), which still pushes every probability towards 0.
    """
    p = prob.float().flatten(1)
    t = target.float().flatten(1)
    inter = (p * t).sum(1)
    dice = (2 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return (1 - dice).mean()


def downsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Mask (B x 1 x H x W, 0/1) -> share of anomalous pixels per cell of `size` (area interpolation)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.float()
    return F.interpolate(mask.float(), size=size, mode="area")


def segmentation_losses(level_logits: list[Tensor], fused_prob: Tensor, mask: Tensor,
                        gamma: float = 2.0) -> dict[str, Tensor]:
    """{'focal', 'dice'}: each the mean over the feature levels and the fused full-size map.

    Averaging (not summing) keeps the loss scale independent of how many levels a profile
    uses, so one set of focal/dice weights fits every encoder.
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be B x 1 x H x W, got {tuple(mask.shape)}")
    focal: list[Tensor] = []
    dice: list[Tensor] = []
    for logits in level_logits:
        target = downsample_mask(mask, (logits.shape[-2], logits.shape[-1]))
        focal.append(focal_loss_with_logits(logits, target, gamma))
        dice.append(dice_loss(torch.sigmoid(logits.float()), target))
    target = downsample_mask(mask, (fused_prob.shape[-2], fused_prob.shape[-1]))
    focal.append(focal_loss_on_probs(fused_prob, target, gamma))
    dice.append(dice_loss(fused_prob, target))
    return {"focal": torch.stack(focal).mean(), "dice": torch.stack(dice).mean()}
