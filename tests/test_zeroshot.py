"""Zero-shot modes: the maths on hand-made features (a planted defect, the excluded window,
robustness to defects in other images, linear pair counts) and the plumbing through the
API, the CLI and the eval harness on the tiny checkpoint (64 px, frozen Lite0 encoder)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anomalygpt.zeroshot.batch_mutual import mutual_scores, pair_list, partner_distances
from anomalygpt.zeroshot.self_similarity import self_similarity_scores, window_mask
from anomalygpt.zeroshot.thresholds import most_normal, robust_z

pytestmark = pytest.mark.usefixtures("one_thread")
H = W = 12


def texture_feats(n: int = 1, period: int = 3, dim: int = 16, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """n x (H*W) x dim: a periodic texture (a patch's feature depends on (y, x) mod period)
    plus a little noise, L2-normalized."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(period * period, dim, generator=g)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    idx = ((yy % period) * period + xx % period).flatten()
    f = protos[idx].expand(n, -1, -1) + noise * torch.randn(n, H * W, dim, generator=g)
    return F.normalize(f, dim=-1)


def plant(f: torch.Tensor, img: int, y: int, x: int, seed: int = 1) -> torch.Tensor:
    f = f.clone()
    g = torch.Generator().manual_seed(seed)
    f[img, y * W + x] = F.normalize(torch.randn(f.shape[-1], generator=g), dim=-1)
    return f


# ---------------------------------------------------------------------------- self
def test_planted_defect_scores_highest_in_self_similarity():
    f = plant(texture_feats(), 0, 5, 7)
    m = self_similarity_scores(f, H, W, window=1)
    assert m.shape == (1, 1, H, W)
    assert int(m.flatten().argmax()) == 5 * W + 7
    normal = m.flatten()[torch.arange(H * W) != 5 * W + 7]
    assert m.max() > 3 * normal.max()  # normal patches find a twin one period away


def test_excluded_window_parameter():
    """A texture whose only twins are ADJACENT patches (period 1 along x in pairs): with
    window 0 a patch matches its neighbour; a window of 1 removes it, the score jumps."""
    g = torch.Generator().manual_seed(0)
    rows = F.normalize(torch.randn(H * W // 2, 256, generator=g), dim=-1)  # near-orthogonal
    f = rows.repeat_interleave(2, dim=0).unsqueeze(0)  # patch (y, 2k) == patch (y, 2k+1), unique otherwise
    w0 = self_similarity_scores(f, H, W, window=0)
    w1 = self_similarity_scores(f, H, W, window=1)
    assert w0.max() < 1e-5 and w1.min() > 0.5
    mask = window_mask(H, W, 2)
    assert mask.diagonal().all() and int(mask[0].sum()) == 9 and int(mask[5 * W + 5].sum()) == 25
    with pytest.raises(ValueError, match="excludes the whole"):
        self_similarity_scores(f, H, W, window=6)


def test_nearest_twins_find_a_long_crack_that_the_nearest_twin_misses():
    """A crack drawn along a whole row: each of its patches has twins on the same row, outside
    the window, so the nearest twin alone calls it normal; a normal patch has dozens of
    twins (period 2 on a 12 x 12 grid: about 30), so the mean of its 20 nearest stays close
    while the crack's 20 nearest must reach into the texture."""
    f = texture_feats(period=2, dim=64, noise=0.02)
    g = torch.Generator().manual_seed(3)
    crack = F.normalize(torch.randn(f.shape[-1], generator=g), dim=-1)
    row = 6
    f[0, row * W:(row + 1) * W] = crack
    on_crack = torch.zeros(H * W, dtype=torch.bool)
    on_crack[row * W:(row + 1) * W] = True
    nearest = self_similarity_scores(f, H, W, window=1).flatten()
    twins = self_similarity_scores(f, H, W, window=1, k=20).flatten()
    assert nearest[on_crack].max() < 1e-5           # the crack matches itself two steps along
    assert twins[on_crack].min() > 0.3 > 0.1 > twins[~on_crack].max()
    assert torch.equal(self_similarity_scores(f, H, W, window=1, k=1), nearest.view(1, 1, H, W))


def test_nearest_twins_count_is_capped_at_the_patches_left():
    """k beyond the patches outside the window averages over all of them (the excluded ones
    never count); the count of the library's default scales with the grid."""
    from anomalygpt.zeroshot.modes import twin_count

    f = texture_feats(noise=0.1)
    near = window_mask(H, W, 4)
    sims = (f[0] @ f[0].t()).masked_fill(near, float("nan"))
    mean_all = 1.0 - torch.nanmean(sims, 1)
    capped = self_similarity_scores(f, H, W, window=4, k=10_000).flatten()
    fewest = int((~near).sum(1).min())
    assert torch.allclose(capped[(~near).sum(1) == fewest], mean_all[(~near).sum(1) == fewest], atol=1e-5)
    with pytest.raises(ValueError, match="k must be"):
        self_similarity_scores(f, H, W, window=1, k=0)
    assert twin_count(0.02, 28 * 28, 3) == 63 and twin_count(0.0, 28 * 28, 3) == 1 and twin_count(0.02, 8 * 8, 0) == 1


# ---------------------------------------------------------------------------- batch
def test_batch_defect_scores_highest_and_is_robust_to_defects_in_other_images():
    n = 20
    f = texture_feats(n, noise=0.1)
    g = torch.Generator().manual_seed(5)
    crack = F.normalize(torch.randn(f.shape[-1], generator=g), dim=-1)
    for i in (0, 1, 2):  # three images carry the SAME defect, at different places
        f[i, (3 + i) * W + 4] = crack
    s = mutual_scores(f, n_compare=n - 1, fraction=0.3)
    assert s.shape == (n, H * W)
    for i in (0, 1, 2):
        assert int(s[i].argmax()) == (3 + i) * W + 4
    # each defect patch matches the two others exactly, yet the lowest 30% of 19 distances
    # (6 of them) average over at least 4 normal images: it stays far above every normal patch
    normal_max = torch.cat([s[3:].flatten(), s[0][torch.arange(H * W) != 3 * W + 4]]).max()
    assert s[0, 3 * W + 4] > 3 * normal_max
    # with fraction so low that only the closest image counts, the shared defect hides
    assert mutual_scores(f, n - 1, fraction=1 / 19)[0, 3 * W + 4] < 0.05


def test_partner_distances_match_a_plain_pairwise_computation():
    """The scoring loop writes into buffers allocated once (a fresh matrix per pair
    fragmented the heap); each row must still be the nearest-patch distance to one partner,
    in pair order, with and without a rotated copy (whose grid may differ in size)."""
    g = torch.Generator().manual_seed(3)
    f = F.normalize(torch.randn(9, 20, 8, generator=g), dim=-1)
    rot = F.normalize(torch.randn(9, 15, 8, generator=g), dim=-1)
    for rotated in (None, rot):
        got = partner_distances(f, n_compare=4, rotated=rotated)
        rows: list[list[torch.Tensor]] = [[] for _ in range(9)]
        for i, j in pair_list(9, 4):
            for a, b in ((i, j), (j, i)):
                best = (f[a] @ f[b].t()).amax(1)
                if rotated is not None:
                    best = torch.maximum(best, (f[a] @ rotated[b].t()).amax(1))
                rows[a].append(1.0 - best)
        assert [d.shape for d in got] == [(len(r), 20) for r in rows]
        for d, r in zip(got, rows):
            assert torch.allclose(d, torch.stack(r), atol=1e-6)


def test_pairs_are_linear_in_batch_size_and_each_computed_once():
    for n, m in ((50, 10), (201, 20), (7, 100)):
        pairs = pair_list(n, m, seed=0)
        assert len(pairs) == len(set(pairs)) and all(i < j for i, j in pairs)
        partners = np.bincount(np.array(pairs).ravel(), minlength=n)
        want = min(m, n - 1)
        assert partners.min() >= want - 1 and partners.max() <= want + 1
        assert len(pairs) <= n * (want + 1) / 2
    assert pair_list(50, 10, seed=0) == pair_list(50, 10, seed=0) != pair_list(50, 10, seed=1)
    with pytest.raises(ValueError, match="at least 2"):
        pair_list(1, 5)


def test_robust_statistics_and_most_normal():
    med, spread = robust_z(np.array([1.0, 1.0, 1.0, 1.0, 100.0]))
    assert med == 1.0 and spread == pytest.approx(1e-6)  # one outlier moves nothing
    v = np.random.default_rng(0).normal(5, 2, 20000)
    assert robust_z(v)[1] == pytest.approx(2, rel=0.05)
    s = np.array([0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 1.0])
    assert most_normal(s, 0.2).tolist() == [1, 5, 3, 7]  # at least 4
    assert most_normal(s, 0.5, maximum=3).tolist() == [1, 5, 3]
    assert len(most_normal(s[:3], 0.2)) == 2  # never every image


# ---------------------------------------------------------------------------- the real scorers
def _textures(n: int, size: int = 64, defect: set[int] = frozenset(), seed: int = 0, hw=None) -> list[np.ndarray]:
    """Striped plates; images in `defect` carry a dark blob."""
    rng = np.random.default_rng(seed)
    h, w = hw or (size, size)
    yy, xx = np.mgrid[:h, :w]
    out = []
    for i in range(n):
        base = 128 + 50 * np.sin(xx / 2.0) * np.sin(yy / 3.0) + rng.normal(0, 4, (h, w))
        if i in defect:
            cy, cx = rng.integers(16, min(h, w) - 16, 2)
            base[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 10
        out.append(np.clip(np.repeat(base[..., None], 3, 2), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    from anomalygpt.inspector import AnomalyGPT

    return AnomalyGPT.from_pretrained(str(tiny_checkpoint), with_llm=True)


def test_self_mode_multiscale_map_has_image_size_and_report_names_mode(tiny):
    img = _textures(1, defect={0}, hw=(80, 112))[0]
    tiny.cfg.zero_shot.scales = [1.0, 1.5]
    try:
        rep = tiny.inspect(img, zero_shot="self", question="Is there any anomaly in the image?")
    finally:
        tiny.cfg.zero_shot.scales = [1.0]
    assert rep.anomaly_map.shape == (80, 112) and rep.mode == "zero-shot:self" and rep.n_references == 0
    assert rep.to_dict()["mode"] == "zero-shot:self" and "[zero-shot:self]" in rep.summary()
    assert rep.facts().startswith("Measured facts: anomaly score") and "zero-shot" not in rep.facts()
    assert isinstance(rep.answer, str) and rep.answer  # the LLM answered from the same facts
    assert np.isfinite(rep.score) and np.isfinite(rep.threshold)
    if rep.is_anomalous:
        assert rep.regions and rep.affected_cells


def test_self_mode_puts_the_peak_on_the_planted_defect(tiny):
    imgs = _textures(4, defect={0, 1, 2, 3}, seed=3)
    for img, rep in zip(imgs, tiny.inspect_many(imgs, zero_shot="self", question=None)):
        y, x = np.unravel_index(int(np.argmax(rep.anomaly_map)), rep.anomaly_map.shape)
        dark = np.argwhere(img[..., 0] == 10)
        assert np.abs(dark - [y, x]).sum(1).min() <= 8  # within one encoder stride of the blob


def test_batch_mode_ranks_defective_images_first_and_keeps_order(tiny):
    defect = {2, 7, 11}
    imgs = _textures(16, defect=defect, seed=1)
    reps = list(tiny.inspect_many(imgs, zero_shot="batch", question=None, batch_size=5))
    assert len(reps) == 16 and all(r.mode == "zero-shot:batch" for r in reps)
    scores = np.array([r.score for r in reps])
    assert set(np.argsort(scores)[-3:].tolist()) == defect
    assert len({r.threshold for r in reps}) == 1 and "16 images" in reps[0].threshold_source
    with pytest.raises(ValueError, match="at least 2 images"):
        tiny.inspect(imgs[0], zero_shot="batch")
    zs = tiny.cfg.zero_shot  # the options that did not help on ELPV dev sets still run end to end
    zs.batch_rot90, zs.rescore_k, zs.set_rule = True, 3, "lower"
    try:
        reps = list(tiny.inspect_many(imgs, zero_shot="batch", question=None))
    finally:
        zs.batch_rot90, zs.rescore_k, zs.set_rule = False, 0, "gmm"
    scores = np.array([r.score for r in reps])
    assert set(np.argsort(scores)[-3:].tolist()) == defect and "16 images' log scores" in reps[0].threshold_source


def test_mode_errors_and_registry_extension(tiny):
    from anomalygpt import zeroshot
    from anomalygpt.zeroshot.modes import ZeroShotMode, ZeroShotResult

    img = _textures(1)[0]
    with pytest.raises(ValueError, match="unknown zero-shot mode 'nope'; use one of: .*batch.*self"):
        tiny.inspect(img, zero_shot="nope")
    with pytest.raises(ValueError, match="uses no reference images"):
        tiny.inspect(img, references=[img, img], zero_shot="self")

    def flat(images, ctx):  # a new mode is one registry entry
        n, s = len(images), ctx.map_size
        amap = torch.zeros(n, 1, s, s)
        return ZeroShotResult(amap, torch.zeros(n), np.full(n, 1.0), "fixed for the test", torch.zeros(n, 4))

    zeroshot.register(ZeroShotMode("flat", flat, needs_batch=False, input_size=lambda cfg, s: s))
    try:
        rep = tiny.inspect(img, zero_shot="flat", question=None)
        assert rep.mode == "zero-shot:flat" and rep.verdict == "normal" and rep.threshold_source == "fixed for the test"
        tiny.cfg.zero_shot.mode = "flat"  # the config key chooses the mode when the call does not
        assert tiny.inspect(img, question=None).mode == "zero-shot:flat"
        assert tiny.inspect(img, question=None, zero_shot="").mode == "decoder"
    finally:
        tiny.cfg.zero_shot.mode = ""
        del zeroshot.MODES["flat"]


def test_config_validates_zero_shot_keys():
    from anomalygpt.config import ConfigError, from_dict

    assert from_dict({"zero_shot": {"mode": "batch", "fraction": 0.2}}).zero_shot.fraction == 0.2
    for bad in ({"fraction": 0}, {"window": -1}, {"scales": []}, {"n_compare": 0}, {"pools": []}, {"pools": [2]},
                {"set_rule": "otsu"}, {"set_k": 0}, {"mode_fraction": 1.5}, {"rescore_k": -1}):
        with pytest.raises(ConfigError, match="zero_shot"):
            from_dict({"zero_shot": bad})


def _save(folder, imgs):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(imgs):
        paths.append(str(folder / f"{i:02d}.png"))
        Image.fromarray(im).save(paths[-1])
    return paths


def test_cli_inspect_folder_zero_shot_batch_and_self(tmp_path, tiny_checkpoint, capsys):
    from anomalygpt.cli import main

    _save(tmp_path / "lot", _textures(6, defect={4}, seed=2))
    (tmp_path / "lot" / "zz_broken.png").write_bytes(b"not an image")
    code = main(["inspect", str(tmp_path / "lot"), "--zero-shot", "batch", "--no-answer",
                 "--checkpoint", str(tiny_checkpoint), "--json"])
    cap = capsys.readouterr()
    reports = json.loads(cap.out)
    assert code == 1 and "zz_broken.png" in cap.err  # the lot goes on past a bad file
    assert len(reports) == 6 and all(r["mode"] == "zero-shot:batch" and r["n_references"] == 0 for r in reports)
    assert max(reports, key=lambda r: r["score"])["source"].endswith("04.png")
    assert main(["inspect", str(tmp_path / "lot" / "00.png"), "--zero-shot", "self", "--no-answer",
                 "--checkpoint", str(tiny_checkpoint)]) == 0
    assert "[zero-shot:self]" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "lot" / "00.png"), "--zero-shot", "self", "--ref",
                 str(tmp_path / "lot" / "01.png"), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "uses no reference images" in capsys.readouterr().err


def test_eval_zero_shot_prints_the_same_table(tmp_path, tiny_checkpoint, capsys):
    from anomalygpt.cli import main

    root = tmp_path / "data"
    _save(root / "good", _textures(6, seed=4))
    _save(root / "blob", _textures(3, defect={0, 1, 2}, seed=5))
    for mode in ("batch", "self"):
        assert main(["eval", "--dataset", f"folder:{root}", "--shots", "0", "--zero-shot", mode, "--no-answers",
                     "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / mode)]) == 0
        out = capsys.readouterr().out
        assert f"zero-shot={mode}" in out and "img AUROC" in out and "verdict" in out
        res = json.loads((tmp_path / mode / "results.json").read_text())
        assert res["zero_shot"]["mode"] == mode and res["zero_shot"]["settings"]["mode"] == mode
        run = res["groups"]["data"]["runs"][0]
        assert run["mode"] == f"zero-shot:{mode}" and run["n_images"] == 9 and run["n_references"] == 0
    assert main(["eval", "--dataset", f"folder:{root}", "--shots", "2", "--zero-shot", "self", "--no-answers",
                 "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x")]) == 2
    assert "--shots 0" in capsys.readouterr().err


def test_set_threshold_splits_two_populations_and_keeps_one_whole():
    from anomalygpt.zeroshot.modes import gumbel_k
    from anomalygpt.zeroshot.thresholds import gmm_threshold as set_threshold

    rng = np.random.default_rng(0)
    for share in (0.05, 0.3, 0.7):  # a good lot, a bad lot, ELPV's 71% defective split
        normal = rng.normal(0.20, 0.02, int(400 * (1 - share)))
        bad = rng.normal(0.45, 0.06, int(400 * share))
        thr, src = set_threshold(np.r_[normal, bad])
        assert 0.24 < thr < 0.38 and "two-population" in src
    normal = rng.normal(0.20, 0.02, 300)
    thr, src = set_threshold(normal)
    assert thr == pytest.approx(normal.mean() + normal.std()) and "one population" in src
    with pytest.raises(ValueError, match="at least 8"):
        set_threshold(normal[:5])
    assert gumbel_k(28 * 28) == pytest.approx(4.16, abs=0.01) and gumbel_k(64) < gumbel_k(784)


def test_carry_share_flags_as_many_as_the_first_split():
    from anomalygpt.zeroshot.thresholds import carry_share

    first = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.25])
    second = np.array([0.5, 0.1, 0.7, 0.2, 0.9, 0.3])   # another ranking of the same images
    for thr, k in ((0.5, 2), (0.05, 6), (1.0, 0), (0.22, 4)):
        t2 = carry_share(first, thr, second)
        assert int((second >= t2).sum()) == k == int((first > thr).sum())
    with pytest.raises(ValueError, match="same images"):
        carry_share(first, 0.5, second[:3])


@pytest.mark.parametrize("defect", [set(), {2, 7, 11}])
def test_second_pass_flags_as_many_images_as_the_first(tiny, defect):
    """The second pass's references are scored against each other only, so they sit low;
    its verdicts keep the first pass's count of defective images (a clean folder is not
    split into references and the rest)."""
    imgs = _textures(16, defect=defect, seed=1)
    zs = tiny.cfg.zero_shot
    flagged = {}
    for second in (False, True):
        zs.second_pass = second
        try:
            reps = list(tiny.inspect_many(imgs, zero_shot="batch", question=None))
        finally:
            zs.second_pass = True
        flagged[second] = [i for i, r in enumerate(reps) if r.is_anomalous]
    assert len(flagged[True]) == len(flagged[False])
    assert defect <= set(flagged[True]) or len(flagged[True]) < len(defect)


def test_self_agreement_reads_only_the_batch_extremes():
    from anomalygpt.zeroshot.modes import self_agreement

    b = np.arange(20, dtype=float)
    assert self_agreement(b, b) == 1.0 and self_agreement(b, -b) == 0.0
    middle = b.copy()
    middle[4:16] = -100.0  # self disagreeing on the batch's uncertain middle does not count
    assert self_agreement(b, middle) == 1.0
    assert self_agreement(b, np.ones(20)) == 0.5  # ties count half
    with pytest.raises(ValueError, match="same images"):
        self_agreement(b, b[:5])
    with pytest.raises(ValueError, match="too few"):
        self_agreement(b[:3], b[:3])


@pytest.mark.parametrize("agree", [0.5, 0.95])
def test_batch_adds_self_only_past_the_gate_and_keeps_the_count(tiny, monkeypatch, agree):
    """'auto' adds each image's own twins to the batch map only when `self` agrees with the
    batch's surest images at batch_self_gate or above; the first pass's count of defective
    images stays, and the report says which was done."""
    from anomalygpt.zeroshot import modes

    defect = {2, 7, 11}
    imgs = _textures(16, defect=defect, seed=1)
    zs = tiny.cfg.zero_shot
    seen = []

    def fixed(b, s, share=0.2):  # the batch's and self's scores of the same 16 images
        seen.append((len(b), len(s)))
        return agree

    zs.batch_self = "off"
    try:
        off = list(tiny.inspect_many(imgs, zero_shot="batch", question=None))
        zs.batch_self = "auto"
        monkeypatch.setattr(modes, "self_agreement", fixed)
        auto = list(tiny.inspect_many(imgs, zero_shot="batch", question=None))
    finally:
        zs.batch_self = "off"
    assert seen == [(16, 16)]
    fused = agree >= zs.batch_self_gate
    assert ("own twins added" in auto[0].threshold_source) == fused
    assert ("own twins not added" in auto[0].threshold_source) == (not fused)
    assert "twins" not in off[0].threshold_source
    assert sum(r.is_anomalous for r in auto) == sum(r.is_anomalous for r in off)
    scores = np.array([r.score for r in auto])
    assert set(np.argsort(scores)[-3:].tolist()) == defect
    same = all(a.score == o.score for a, o in zip(auto, off))
    assert same == (not fused)


def test_image_scores_in_chunks_equal_one_pass():
    """The image score blurs a few maps at a time (the blur's unfolded copy of a whole call
    of 2,000 maps cost 7 GB); every chunk boundary must give the same score as one pass."""
    from anomalygpt.models.detector import gaussian_blur
    from anomalygpt.zeroshot.modes import image_scores

    maps = torch.rand(7, 1, 40, 40, generator=torch.Generator().manual_seed(2)) ** 4
    whole = gaussian_blur(maps, 2.0).flatten(1).amax(1)
    for chunk in (1, 3, 7, 64):
        assert torch.allclose(image_scores(maps, 2.0, chunk=chunk), whole, atol=1e-7)


def test_self_and_batch_run_on_an_open_clip_vit():
    """The vision-guided modes take any encoder, a CLIP ViT included (what a user with hub
    access would run them on): a tiny random ViT, six near-identical images, one with a
    bright square; both modes put that image on top and `batch` its map's peak on the square."""
    import dataclasses

    from anomalygpt.checkpoint import build_image_encoder
    from anomalygpt.config import EncoderConfig, ZeroShotConfig
    from anomalygpt.zeroshot.modes import ZeroShotContext, score_batch, score_self

    vit = {"embed_dim": 24, "vision_cfg": {"image_size": 64, "layers": 3, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    enc = build_image_encoder(EncoderConfig(backend="open_clip", name="zs-tiny-vit64", pretrained="none", image_size=64,
                                            levels=[1, 2], model_kwargs={"model_cfg": vit}))
    ctx = ZeroShotContext(enc, dataclasses.replace(ZeroShotConfig(), window=2), 64, 1.0)  # an 8 x 8 grid
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(1, 3, 64, 64, generator=g) + 0.02 * torch.rand(6, 3, 64, 64, generator=g)).clamp(0, 1)
    x[3, :, 24:40, 8:24] = 1.0
    batch, own = score_batch(x, ctx), score_self(x, ctx)
    assert batch.anomaly_map.shape == own.anomaly_map.shape == (6, 1, 64, 64)
    assert int(batch.scores.argmax()) == 3 and int(own.scores.argmax()) == 3
    assert batch.scores[3] > 10 * batch.scores[torch.arange(6) != 3].max()
    y, xx = divmod(int(batch.anomaly_map[3, 0].argmax()), 64)
    assert 24 <= y < 40 and 8 <= xx < 24


def test_long_batch_calls_show_progress_on_a_terminal_only(monkeypatch):
    """A `batch` call of thousands of images runs for minutes: its mutual pass reports
    progress through a tqdm bar, on a terminal, for PROGRESS_MIN_IMAGES or more images."""
    import io
    import sys

    from anomalygpt.zeroshot import modes

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    f = texture_feats(40, noise=0.1)
    for stream, n_images, shown in ((Terminal(), 300, True), (Terminal(), 10, False), (io.StringIO(), 300, False)):
        monkeypatch.setattr(sys, "stderr", stream)
        step = modes.step_progress(n_images, "batch zero-shot test")
        with step as progress:
            assert (progress is not None) == (n_images >= modes.PROGRESS_MIN_IMAGES)
            mutual_scores(f, n_compare=39, fraction=0.3, progress=progress)
        assert ("batch zero-shot test" in stream.getvalue()) == shown
        if progress is not None and shown:  # 780 pairs, reported every 256
            assert (step.bar.n, step.bar.total) == (768, 780)


def test_reference_scores_leave_a_reference_out_and_take_copies():
    """The second pass's scorer: a reference never meets its own patches (nor its own turned
    copy's), an image that IS one of the references elsewhere scores 0, and a copy holding a
    patch's exact twin makes that patch normal."""
    from anomalygpt.zeroshot.modes import reference_scores

    g = torch.Generator().manual_seed(4)
    f = F.normalize(torch.randn(6, 10, 8, generator=g), dim=-1)
    f[5] = f[2]                                   # image 5 is a copy of reference 2
    refs = np.array([0, 2])
    plain = reference_scores(f, refs)
    assert torch.allclose(plain[5], torch.zeros(10), atol=1e-6)   # finds itself in reference 2
    assert (plain[0] > 0.05).all() and (plain[2] > 0.05).all()     # left out: no self-match
    assert torch.equal(reference_scores(f, refs, copies=()), plain)
    copy = F.normalize(torch.randn(6, 10, 8, generator=g), dim=-1)
    copy[2, 3] = f[4, 7]                          # reference 2's copy holds a twin of image 4's patch 7
    copy[0] = f[0]                                # reference 0's copy is itself: still left out
    turned = reference_scores(f, refs, copies=[copy])
    assert turned[4, 7] < 1e-6 < plain[4, 7]
    assert (turned[0] > 0.05).all()
    assert (turned <= plain + 1e-6).all()         # a bigger bank only brings patches closer
