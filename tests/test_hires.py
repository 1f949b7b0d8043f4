"""High-resolution fine level of the reference map (issue 19, item 1): tiles cover the image,
pasted-back maps land on the right pixels, the fine bank follows the references, and the
config refuses bad values with one clear line."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch

from anomalygpt import checkpoint as model_io
from anomalygpt.config import ConfigError, from_dict
from anomalygpt.images import fine_tensor
from anomalygpt.models.hires import combine, cut_tiles, fine_canvas, paste_tiles, tile_boxes, tile_starts


@pytest.mark.parametrize("length", [64, 65, 100, 127, 128, 200, 300, 448])
def test_tile_starts_cover_the_side_with_overlap(length):
    tile = 64
    starts = tile_starts(length, tile)
    assert starts[0] == 0 and starts[-1] + tile == length
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= 0.75 * tile + 1).all()  # neighbours overlap by >= a quarter tile


def test_tile_smaller_than_tile_size_is_refused():
    with pytest.raises(ValueError, match="smaller than the tile"):
        tile_starts(50, 64)


def test_pasted_tiles_rebuild_the_canvas_and_land_on_the_right_pixels():
    h, w, t = 100, 150, 64
    canvas = torch.arange(h * w, dtype=torch.float32).view(1, h, w)
    boxes = tile_boxes(h, w, t)
    tiles = cut_tiles(canvas, boxes, t)
    assert tiles.shape == (len(boxes), 1, t, t)
    assert torch.equal(paste_tiles(tiles, boxes, t, (h, w))[0], canvas)  # overlaps average equal values
    # one hot pixel in one tile: it lands at the tile's offset, averaged with the other tiles there
    maps = torch.zeros(len(boxes), 1, t, t)
    k, (r, c) = len(boxes) - 1, (5, 7)
    maps[k, 0, r, c] = 1.0
    out = paste_tiles(maps, boxes, t, (h, w))[0, 0]
    y, x = boxes[k][0] + r, boxes[k][1] + c
    n_over = sum(1 for by, bx in boxes if by <= y < by + t and bx <= x < bx + t)
    assert tuple(np.unravel_index(int(out.argmax()), out.shape)) == (y, x)
    assert float(out[y, x]) == pytest.approx(1.0 / n_over) and n_over >= 2
    assert float(out.sum()) == pytest.approx(1.0 / n_over)
    with pytest.raises(ValueError, match="do not cover"):
        paste_tiles(maps[:1], boxes[:1], t, (h, w))


def test_fine_canvas_and_fine_tensor_shapes():
    assert fine_canvas(300, 300, "2x", 224) == (448, 448)
    assert fine_canvas(300, 260, "tiles", 224) == (300, 260)       # its own resolution
    assert fine_canvas(100, 1000, "tiles", 224) == (224, 448)      # clamped to 1-2x the encoder's size
    with pytest.raises(ValueError, match="hires mode"):
        fine_canvas(100, 100, "off", 224)
    rgb = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    assert fine_tensor(rgb, "2x", 64).shape == (3, 128, 128)
    assert fine_tensor(rgb, "tiles", 64).shape == (3, 90, 120)
    assert torch.equal(fine_tensor(rgb, "tiles", 64), torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


def test_combine_mean_and_max():
    a, b = torch.tensor([0.2, 0.6]), torch.tensor([0.4, 0.2])
    assert torch.allclose(combine(a, b, "mean", 0.25), torch.tensor([0.25, 0.5]))
    assert torch.equal(combine(a, b, "max", 0.0), torch.tensor([0.4, 0.6]))
    with pytest.raises(ValueError, match="mean or max"):
        combine(a, b, "median", 0.5)


@pytest.mark.parametrize("override, key", [({"hires": "4x"}, "memory.hires"), ({"hires_fusion": "sum"}, "memory.hires_fusion"),
                                           ({"hires_weight": 1.5}, "memory.hires_weight"),
                                           ({"hires_levels": "coarse"}, "memory.hires_levels"),
                                           ({"hires_pool": 2}, "memory.hires_pool")])
def test_config_refuses_bad_hires_values(override, key):
    with pytest.raises(ConfigError, match=key) as e:
        from_dict({"memory": override})
    assert "\n" not in str(e.value) and "use" in str(e.value)
    assert from_dict({"memory": {"hires": "tiles", "hires_fusion": "max", "hires_weight": 1}}).memory.hires == "tiles"


def test_bare_yaml_off_means_off():
    """YAML reads `hires: off` (and the override memory.hires=off) as false; it means "off"."""
    from anomalygpt.config import parse_override

    key, value = parse_override("memory.hires=off")
    assert value is False and from_dict({"memory": {"hires": value}}).memory.hires == "off"
    with pytest.raises(ConfigError, match="memory.hires"):
        from_dict({"memory": {"hires": True}})  # "on" is not a mode: say which


@pytest.fixture(scope="module")
def detector(tiny_config, one_thread):
    torch.manual_seed(0)
    det = model_io.build(copy.deepcopy(tiny_config)).detector.eval()
    det.cfg.memory.orientations = "none"
    return det


def texture(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = cv2.resize(rng.uniform(0, 255, (h // 4, w // 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.repeat(np.clip(x, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def to_x(imgs: list[np.ndarray], size: int = 64) -> torch.Tensor:
    return torch.stack([torch.from_numpy(cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA)).permute(2, 0, 1).float() / 255
                        for i in imgs])


@torch.no_grad()
def test_hires_off_keeps_one_bank_and_the_maps_shapes(detector):
    detector.cfg.memory.hires = "off"
    refs = [texture(i) for i in range(3)]
    bank = detector.build_bank(to_x(refs))
    assert bank.fine is None
    det = detector(to_x([texture(9), texture(10)]), bank)
    assert det.anomaly_map.shape == det.reference_map.shape == (2, 1, 64, 64)


@pytest.mark.parametrize("mode, levels", [("2x", "finest"), ("tiles", "finest"), ("tiles", "all")])
@torch.no_grad()
def test_hires_fine_bank_shapes_and_leave_one_out(detector, mode, levels):
    detector.cfg.memory.hires, detector.cfg.memory.hires_levels = mode, levels
    try:
        refs = [texture(i, 96, 80) for i in range(3)]
        fine = [fine_tensor(r, mode, 64) for r in refs]
        bank = detector.build_bank(to_x(refs), fine=fine)
        per_ref = (128 // 8) ** 2 if mode == "2x" else len(tile_boxes(96, 80, 64)) * (64 // 8) ** 2
        assert bank.fine is not None and len(bank.fine) == 3 * per_ref
        n_ch = sum(detector.encoder.dims) if levels == "all" else detector.encoder.dims[0]
        assert bank.fine.bank.shape[1] == n_ch and bank.fine.pool == detector.cfg.memory.hires_pool
        assert len(bank.without(1).fine) == 2 * per_ref and set(bank.without(1).fine.owners.tolist()) == {0, 2}
        queries = [texture(20, 96, 80), texture(21, 96, 80)]
        qfine = [fine_tensor(q, mode, 64) for q in queries]
        det = detector(to_x(queries), bank, fine=qfine)
        assert det.anomaly_map.shape == det.reference_map.shape == (2, 1, 64, 64)
        feats = detector.encode_fine(qfine)
        assert detector.fine_map(feats, bank.fine, (64, 64)).shape == (2, 1, 64, 64)
        assert detector.fine_map(feats.subset(1), bank.fine, (64, 64)).shape == (1, 1, 64, 64)
        # without the fine inputs the detector makes them from the encoder-size images
        assert detector(to_x(queries), bank).anomaly_map.shape == (2, 1, 64, 64)
    finally:
        detector.cfg.memory.hires, detector.cfg.memory.hires_levels = "off", "finest"


@torch.no_grad()
def test_tiled_fine_map_finds_a_small_defect_where_it_is(detector):
    """A copy of a reference at its own resolution (128 px: four 64 px tiles) scores about 0
    everywhere; the same copy with a 3 px dot scores highest at the dot."""
    detector.cfg.memory.hires = "tiles"
    try:
        ref = texture(3, 128, 128)
        bank = detector.build_bank(to_x([ref]), fine=[fine_tensor(ref, "tiles", 64)])
        bad = ref.copy()
        bad[70:73, 40:43] = 255
        feats = detector.encode_fine([fine_tensor(ref, "tiles", 64), fine_tensor(bad, "tiles", 64)])
        fm = detector.fine_map(feats, bank.fine, (128, 128))
        assert float(fm[0].max()) < 1e-3
        y, x = np.unravel_index(int(fm[1, 0].argmax()), (128, 128))
        assert abs(y - 71) <= 12 and abs(x - 41) <= 12 and float(fm[1].max()) > 0.01
    finally:
        detector.cfg.memory.hires = "off"


@torch.no_grad()
def test_inspector_with_hires_keeps_leave_one_out_and_distribution(tiny_checkpoint, one_thread):
    from anomalygpt.inspector import AnomalyGPT

    a = AnomalyGPT.from_pretrained(tiny_checkpoint, with_llm=False)
    a.cfg.memory.dist_weight = 1.0
    refs = [texture(i, 80, 80) for i in range(4)]
    off = a.build_references(refs)
    a.cfg.memory.hires = "tiles"
    on = a.build_references(refs)
    assert off.bank.fine is None and on.bank.fine is not None
    assert on.threshold is not None and on.ref_scale is not None and "leave-one-out" in on.source
    rep = a.inspect(texture(30, 80, 80), on, question=None)
    assert rep.anomaly_map.shape == (80, 80) and np.isfinite(rep.score)
