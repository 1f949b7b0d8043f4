"""Second round of zero-shot pieces: aggregation degrees from one encoder pass, orientation-
invariant mutual scoring, image-level re-scoring with neighbours, and the contamination-robust
set threshold (half-sample mode + the spread of the values below it)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalygpt.zeroshot.batch_mutual import mutual_scores
from anomalygpt.zeroshot.rescore import knn_rescore
from anomalygpt.zeroshot.thresholds import densest_point, gmm_lower_threshold, left_tail_threshold, set_threshold

pytestmark = pytest.mark.usefixtures("one_thread")


def test_densest_point_stays_on_the_dense_population():
    rng = np.random.default_rng(0)
    dense = rng.normal(0.0, 0.1, 300)
    spread = rng.uniform(1.0, 6.0, 700)  # 70% of the sample, but spread out
    x = np.r_[dense, spread]
    assert abs(densest_point(x)) < 0.1 < abs(np.median(x))
    assert densest_point(x, 0.5) > 0.3  # a half of the sample cannot sit in a 30% population
    assert densest_point([2.0]) == 2.0 and densest_point([1.0, 3.0], 1.0) == 2.0
    assert densest_point([1.0, 1.1, 5.0], 0.5) == pytest.approx(1.05)
    with pytest.raises(ValueError, match="empty"):
        densest_point([])


def test_left_tail_threshold_ignores_the_share_of_defects():
    """The normal population's mode and lower spread decide; the defects' share does not."""
    rng = np.random.default_rng(1)
    thrs = []
    for share in (0.0, 0.1, 0.5, 0.7):
        normal = np.exp(rng.normal(np.log(0.2), 0.1, 300))
        bad = np.exp(rng.uniform(np.log(0.35), np.log(0.9), int(300 * share / (1 - share))))
        thr, mode, spread = left_tail_threshold(np.r_[normal, bad], 2.0)
        assert mode == pytest.approx(np.log(0.2), abs=0.05) and spread == pytest.approx(0.1, rel=0.3)
        thrs.append(thr)
    assert max(thrs) - min(thrs) < 0.04 and all(0.22 < t < 0.29 for t in thrs)  # exp(log 0.2 + 2 x 0.1) = 0.244
    assert left_tail_threshold(np.full(20, 0.3), 3.0)[0] == pytest.approx(0.3, rel=1e-3)  # no spread: no crash


def test_knn_rescore_pulls_an_isolated_score_toward_its_neighbours():
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(2, 8, generator=g), dim=-1)
    emb = torch.cat([centers[0] + 0.01 * torch.randn(6, 8, generator=g), centers[1] + 0.01 * torch.randn(4, 8, generator=g)])
    s = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.8, 0.8, 0.8, 0.8])  # image 5: a high score among normal lookalikes
    r = knn_rescore(s, emb, k=3, alpha=0.5)
    assert r[5] == pytest.approx(0.5 * 0.9 + 0.5 * 0.1)
    assert np.allclose(r[6:], 0.8) and np.allclose(r[:5], [0.1 + 0.5 * (np.mean(x) - 0.1) for x in
                                                          [[0.1, 0.1, 0.9]] * 5], atol=0.14)
    assert np.array_equal(knn_rescore(s, emb, k=0), s)
    assert knn_rescore(s[:2], emb[:2], k=5).tolist() == pytest.approx([0.1, 0.1])  # k capped at N - 1
    with pytest.raises(ValueError, match="embeddings"):
        knn_rescore(s, emb[:3], 2)


def test_rotated_copies_let_a_turned_image_find_its_twins():
    """Half the images are 'turned': their patches come from another set of prototypes (what a
    CNN sees of a part rotated by 90 degrees). Without the rotated copies the turned images
    score high against the upright majority; with them, every image finds twins."""
    g = torch.Generator().manual_seed(0)
    n, p, c = 12, 30, 32
    up, turned = F.normalize(torch.randn(2, p, c, generator=g), dim=-1)
    noise = lambda: 0.05 * torch.randn(n, p, c, generator=g)  # noqa: E731
    upright = torch.arange(n) % 3 != 0  # a third of the images is turned
    feats = F.normalize(torch.where(upright[:, None, None], up, turned) + noise(), dim=-1)
    rot = F.normalize(torch.where(upright[:, None, None], turned, up) + noise(), dim=-1)  # each one turned
    plain = mutual_scores(feats, n - 1, 0.5)
    inv = mutual_scores(feats, n - 1, 0.5, rotated=rot)
    assert plain[~upright].mean() > 3 * plain[upright].mean()
    assert inv[~upright].mean() < 2 * inv[upright].mean()
    assert torch.equal(mutual_scores(feats, n - 1, 0.5), plain)
    with pytest.raises(ValueError, match="rotated features"):
        mutual_scores(feats, 5, 0.5, rotated=rot[:, :, :8])


def test_pool_sets_come_from_one_pass_and_equal_single_pools(tiny_checkpoint):
    from anomalygpt.inspector import AnomalyGPT
    from anomalygpt.zeroshot.features import encoder_patch_sets, encoder_patches

    enc = AnomalyGPT.from_pretrained(str(tiny_checkpoint), with_llm=False).detector.encoder
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sets, hw, glob = encoder_patch_sets(enc, x, 64, [1, 3, 5])
    for pool, f in zip([1, 3, 5], sets):
        single, hw1, glob1 = encoder_patches(enc, x, 64, pool)
        assert torch.allclose(f, single) and hw == hw1 and torch.allclose(glob, glob1)
    assert not torch.allclose(sets[0], sets[2])
    turned, hw90, _ = encoder_patches(enc, x, 64, 3, rot90=True)
    assert turned.shape == sets[1].shape and not torch.allclose(turned, sets[1])
    with pytest.raises(ValueError, match="no pool sizes"):
        encoder_patch_sets(enc, x, 64, [])


def test_lower_population_rule_keeps_a_clean_set_whole_and_splits_a_bad_lot():
    rng = np.random.default_rng(2)
    normal = np.exp(rng.normal(np.log(0.2), 0.1, 300))
    thr, src = gmm_lower_threshold(normal, 2.0)
    assert "one population" in src and np.mean(normal >= thr) < 0.06  # ~2.3% beyond 2 std
    for share in (0.1, 0.5, 0.7):
        bad = np.exp(rng.normal(np.log(0.5), 0.15, int(300 * share / (1 - share))))
        thr, src = gmm_lower_threshold(np.r_[normal, bad], 2.0)
        assert "lower of two" in src and 0.22 < thr < 0.3 and np.mean(bad >= thr) > 0.97
    s = np.r_[normal, bad]
    assert set_threshold(s, "lower", 2.0) == gmm_lower_threshold(s, 2.0)
    assert set_threshold(s, "mode", 2.0)[0] == pytest.approx(left_tail_threshold(s, 2.0)[0])
    assert "two-population" in set_threshold(s, "gmm")[1]
    with pytest.raises(ValueError, match="unknown set threshold rule"):
        set_threshold(s, "otsu")
    with pytest.raises(ValueError, match="at least 8"):
        set_threshold(s[:4])
