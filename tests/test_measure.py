"""Verdict -> mask and regions: an anomalous verdict always says where, a normal one never."""
import numpy as np

from data_sim.grid import cell_name
from anomalygpt.inspector import MIN_REGION_SHARE, measure


def _map(size=100):
    yy, xx = np.mgrid[:size, :size]
    return yy, xx, np.zeros((size, size), np.float32)


def test_normal_verdict_has_no_region():
    _, _, amap = _map()
    amap[10:30, 10:30] = 5.0  # above the threshold, but the image score says normal
    mask, regions = measure(amap, score=0.9, threshold=1.0)
    assert not mask.any() and regions == []


def test_large_region_is_reported_with_its_cell():
    _, _, amap = _map()
    amap[70:90, 70:90] = 2.0
    mask, regions = measure(amap, score=2.0, threshold=1.0)
    assert len(regions) == 1 and mask.sum() == 400
    assert regions[0].cell == cell_name(2, 2)


def test_tiny_peak_above_threshold_still_gives_one_region():
    _, _, amap = _map()
    amap[5:8, 50] = 2.0  # 3 pixels: under the size floor of 0.1% (10 px)
    assert 3 < MIN_REGION_SHARE * amap.size
    mask, regions = measure(amap, score=2.0, threshold=1.0)
    assert len(regions) == 1 and mask.sum() == 3 and mask[5:8, 50].all()
    assert regions[0].cell == cell_name(0, 1)


def test_peak_lowered_under_threshold_by_resizing_still_gives_a_region():
    yy, xx, _ = _map()
    amap = np.exp(-((yy - 20) ** 2 + (xx - 80) ** 2) / 50.0).astype(np.float32)  # peak 1.0 at (20, 80)
    mask, regions = measure(amap, score=1.05, threshold=1.02)
    assert len(regions) == 1 and mask[20, 80] and regions[0].cell == cell_name(0, 2)
