"""Reference-side detection (issue 19): orientation copies in the bank, the distribution
score for whole-surface changes, and the threshold from views of 1-3 references."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from anomalygpt import checkpoint as model_io
from anomalygpt.calibrate import reference_views, separating_threshold
from anomalygpt.config import ConfigError, from_dict
from anomalygpt.models.distribution import distribution_score, fit_gaussian, window_stats
from anomalygpt.models.memory_bank import MemoryBank
from anomalygpt.models.orientations import orientation_copies


@pytest.fixture(scope="module")
def detector(tiny_config, one_thread):
    torch.manual_seed(0)
    return model_io.build(tiny_config).detector.eval()


def texture(seed: int, size: int = 64, sigma: float = 0.0) -> np.ndarray:
    """A random speckle surface (the same statistics for every seed); blurred by `sigma`."""
    rng = np.random.default_rng(seed)
    x = cv2.resize(rng.uniform(0, 255, (size // 2, size // 2)).astype(np.float32), (size, size),
                   interpolation=cv2.INTER_NEAREST)
    if sigma:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    return np.repeat(np.clip(x, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def to_x(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in imgs])


def test_orientation_copies_are_distinct_and_named():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    outs = [t(x) for t in orientation_copies("dihedral")]
    assert len(outs) == 8 and torch.equal(outs[0], x)
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    assert len(orientation_copies("rot90")) == 4 and len(orientation_copies("none")) == 1
    with pytest.raises(ValueError, match="dihedral"):
        orientation_copies("sideways")
    with pytest.raises(ConfigError, match="memory.orientations"):
        from_dict({"memory": {"orientations": "sideways"}})


def test_turned_part_matches_only_with_orientation_copies(detector):
    ref = to_x([texture(1)])
    turned = torch.rot90(ref, 1, dims=(-2, -1))
    size = (64, 64)
    detector.cfg.memory.orientations = "none"
    plain = detector.build_bank(ref)
    detector.cfg.memory.orientations = "rot90"
    try:
        rot = detector.build_bank(ref)
    finally:
        detector.cfg.memory.orientations = "none"
    maps, _ = detector.encode(turned)
    assert len(rot) == 4 * len(plain) and rot.n_images == 1
    assert float(detector.reference_map(maps, rot, size).max()) < 1e-4          # an exact copy is in the bank
    assert float(detector.reference_map(maps, plain, size).max()) > 0.05
    # the copies belong to their reference: leave-one-out removes them all
    assert len(rot.without(0)) == 0 and len(rot.without(0).stats) == 0


def test_bank_keeps_a_share_of_patches_when_copies_exceed_the_cap(detector):
    detector.cfg.memory.orientations, cap = "dihedral", detector.cfg.memory.max_patches
    detector.cfg.memory.max_patches = 100
    try:
        bank = detector.build_bank(to_x([texture(i) for i in range(3)]))
        again = detector.build_bank(to_x([texture(i) for i in range(3)]))
    finally:
        detector.cfg.memory.orientations, detector.cfg.memory.max_patches = "none", cap
    assert len(bank) == 100 and torch.equal(bank.bank, again.bank) and set(bank.owners.tolist()) == {0, 1, 2}


def test_window_stats_and_distribution_score_shapes():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(3, 5, 8, 8, generator=g), torch.randn(3, 7, 4, 4, generator=g)]
    st = window_stats(maps, grid=2)
    assert st.shape == (3, 4, 2 * (5 + 7))
    mu, var = fit_gaussian(st[:2].reshape(-1, st.shape[-1]))
    assert (var > 0).all()
    same = distribution_score(st[:2], mu, var)
    far = distribution_score(st[2:] * 3 + 5, mu, var)
    assert far.min() > same.max()


def test_blurred_surface_scores_high_on_distribution_only(detector):
    refs = detector.build_bank(to_x([texture(i) for i in range(3)]))
    maps_ok, _ = detector.encode(to_x([texture(10), texture(11)]))
    maps_blur, _ = detector.encode(to_x([texture(12, sigma=2.0), texture(13, sigma=2.0)]))
    ok, blur = refs.distribution_score(maps_ok), refs.distribution_score(maps_blur)
    assert float(blur.min()) > 2 * float(ok.max())


def test_distribution_term_is_a_hinge_and_off_by_default(detector):
    m = detector.cfg.memory
    assert m.dist_weight == 0.0
    old = (m.dist_weight, m.dist_floor)
    m.dist_weight, m.dist_floor = 2.0, 4.0
    try:
        out = detector.dist_term(torch.tensor([1.0, 4.0, 16.0]))
    finally:
        m.dist_weight, m.dist_floor = old
    assert out.tolist() == pytest.approx([0.0, 0.0, 2.0 * np.log(4.0)], abs=1e-6)


def test_separating_threshold_cuts_between_the_classes():
    thr, bal = separating_threshold(np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8]))
    assert 0.3 < thr < 0.7 and bal == 1.0
    thr, bal = separating_threshold(np.array([0.1, 0.5, 0.9]), np.array([0.4, 0.6, 1.0]))
    assert bal < 1.0 and 0.1 < thr <= 1.0


def test_reference_views_are_seeded_and_hold_simulated_anomalies():
    imgs = [texture(1, 96), texture(2, 96)]
    n1, a1, own = reference_views(imgs, 3, seed=5)
    n2, a2, _ = reference_views(imgs, 3, seed=5)
    assert own == [0, 0, 0, 1, 1, 1] and len(n1) == len(a1) == 6
    assert all(np.array_equal(p, q) for p, q in zip(n1 + a1, n2 + a2))
    assert all(v.shape == (96, 96, 3) and v.dtype == np.uint8 for v in n1 + a1)
    assert sum(not np.array_equal(n, a) for n, a in zip(n1, a1)) >= 4


def test_few_references_get_a_threshold_from_their_own_views(tiny_checkpoint):
    from anomalygpt.inspector import AnomalyGPT

    a = AnomalyGPT.from_pretrained(tiny_checkpoint, with_llm=False)
    assert "too few for leave-one-out" in a.threshold_for(a.build_references([texture(1, 96)] * 2))[1]
    a.cfg.memory.few_threshold = "views"
    try:
        refs = a.build_references([texture(1, 96), texture(2, 96)])
        one = a.build_references([texture(1, 96)])
    finally:
        a.cfg.memory.few_threshold = "checkpoint"
    thr, src = a.threshold_for(refs)
    assert src.startswith("views of the 2 references") and np.isfinite(thr) and "the other references" in src
    assert a.threshold_for(one)[1].startswith("views of the 1 reference:") and "itself" in a.threshold_for(one)[1]


def test_eval_overrides_are_checked_memory_and_zero_shot_settings(tiny_checkpoint):
    from anomalygpt.evaluation.harness import _overrides, _zero_shot_settings, run_eval

    assert _overrides(tiny_checkpoint, []) == ({}, {})
    assert _overrides(tiny_checkpoint, ["memory.orientations=none", "memory.dist_weight=0"]) == (
        {"orientations": "none", "dist_weight": 0.0}, {})
    assert _overrides(tiny_checkpoint, ["zero_shot.second_pass=false", "memory.orientations=none"]) == (
        {"orientations": "none"}, {"second_pass": False})
    settings = _zero_shot_settings(tiny_checkpoint, "batch", 0, {"second_pass": False})["settings"]
    assert settings["second_pass"] is False and settings["mode"] == "batch"
    with pytest.raises(ConfigError, match="only memory"):
        _overrides(tiny_checkpoint, ["encoder.image_size=32"])
    with pytest.raises(ConfigError, match="memory.orientations"):
        _overrides(tiny_checkpoint, ["memory.orientations=sideways"])
    with pytest.raises(ConfigError, match="zero_shot.self_orientations"):
        _overrides(tiny_checkpoint, ["zero_shot.self_orientations=sideways"])
    with pytest.raises(ValueError, match="--zero-shot MODE"):
        run_eval("textures", checkpoint=str(tiny_checkpoint), overrides=["zero_shot.window=2"])


def test_leave_one_out_threshold_uses_the_same_score_as_a_query(tiny_checkpoint):
    """With the distribution term on, each held-out reference's score in the threshold is
    exactly what inspecting it against the other references would give."""
    from anomalygpt.calibrate import threshold_rule
    from anomalygpt.images import batch_tensor
    from anomalygpt.inspector import AnomalyGPT

    a = AnomalyGPT.from_pretrained(tiny_checkpoint, with_llm=False)
    m = a.cfg.memory
    m.dist_weight, m.dist_floor, m.orientations = 1.0, 0.05, "rot90"
    try:
        imgs = [texture(i, 96) for i in range(4)]
        refs = a.build_references(imgs)
        x = batch_tensor(imgs, a.detector.image_size)
        with torch.no_grad():
            dets = [a.detector(x[i:i + 1], refs.bank.without(i), refs.ref_scale) for i in range(4)]
    finally:
        m.dist_weight, m.dist_floor, m.orientations = 0.0, 1.0, "none"
    assert all(float(d.dist_scores[0]) > 0.05 for d in dets)  # the hinge is active
    expected = threshold_rule(np.array([float(d.scores[0]) for d in dets]))[0]
    assert refs.threshold == pytest.approx(expected, rel=1e-5)
