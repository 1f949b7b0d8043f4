"""Zero-shot modes that declare keep_aspect (the language modes: CLIP saw square crops of
real proportions, FADE keeps them) receive the image padded to a square, not squashed, and
their maps come back cropped to the image before being resized to its size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalygpt.images import crop_to_content, letterbox

pytestmark = pytest.mark.usefixtures("one_thread")


def test_letterbox_pads_to_a_square_and_crop_undoes_it():
    rgb = np.zeros((40, 100, 3), np.uint8)
    rgb[:, :, 0] = np.arange(100, dtype=np.uint8)[None]
    sq, box = letterbox(rgb)
    assert sq.shape == (100, 100, 3) and box == (0.3, 0.0, 0.4, 1.0)
    assert np.array_equal(sq[30:70], rgb) and np.array_equal(sq[0], rgb[0])  # edge pixels replicated
    assert np.array_equal(crop_to_content(sq[..., 0], box), rgb[..., 0])
    tall, box_t = letterbox(rgb.transpose(1, 0, 2))
    assert tall.shape == (100, 100, 3) and box_t == (0.0, 0.3, 1.0, 0.4)
    same, box_s = letterbox(rgb[:, :40])
    assert same.shape == (40, 40, 3) and box_s == (0.0, 0.0, 1.0, 1.0)
    small = crop_to_content(np.ones((7, 7)), (0.49, 0.0, 0.01, 1.0))  # never empty
    assert small.shape == (1, 7)


def test_keep_aspect_mode_sees_a_round_blob_round_and_its_map_lands_on_it(tiny_checkpoint):
    from anomalygpt import zeroshot
    from anomalygpt.inspector import AnomalyGPT
    from anomalygpt.zeroshot.modes import ZeroShotMode, ZeroShotResult

    seen = {}

    def darkness(images, ctx):  # the map is the input's darkness: it shows where the scorer saw the blob
        seen["x"] = images.clone()
        n, s = len(images), ctx.map_size
        amap = torch.nn.functional.interpolate(1 - images.mean(1, keepdim=True), size=(s, s), mode="area")
        return ZeroShotResult(amap, amap.flatten(1).amax(1), np.full(n, 0.5), "test", torch.zeros(n, 4))

    img = np.full((60, 180, 3), 230, np.uint8)
    yy, xx = np.mgrid[:60, :180]
    img[(yy - 18) ** 2 + (xx - 140) ** 2 < 12 ** 2] = 0  # a round blob, off centre both ways
    assistant = AnomalyGPT.from_pretrained(str(tiny_checkpoint), with_llm=False)

    def blob_aspect() -> float:
        dark = np.argwhere(seen["x"][0].mean(0).numpy() < 0.5)
        return float(np.ptp(dark[:, 1]) + 1) / float(np.ptp(dark[:, 0]) + 1)

    try:
        for keep, aspect in ((False, 1 / 3), (True, 1.0)):
            zeroshot.register(ZeroShotMode("dark", darkness, needs_batch=False, input_size=lambda cfg, s: s,
                                           keep_aspect=keep))
            rep = assistant.inspect(img, zero_shot="dark", question=None)
            assert blob_aspect() == pytest.approx(aspect, rel=0.2)
            assert rep.anomaly_map.shape == (60, 180)
            y, x = np.unravel_index(int(np.argmax(rep.anomaly_map)), rep.anomaly_map.shape)
            assert abs(y - 18) <= 5 and abs(x - 140) <= 5  # pasted back onto the blob either way (the
            # padded square's map resized whole would put it at y = 60 x (60 + 18) / 180 = 26)
    finally:
        del zeroshot.MODES["dark"]
    for name in ("language", "language+self"):
        assert zeroshot.MODES[name].keep_aspect and not zeroshot.MODES["self"].keep_aspect
