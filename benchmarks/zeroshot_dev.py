"""Choose the zero-shot variants WITHOUT ELPV test labels: a dev set made of ELPV TRAIN
normals of one type, 150 kept clean and the rest given simulated anomalies by data_sim
(`synthesize(texture=True, mode="mix")`, the label measured by the simulator), about the
test split's anomaly share (~70%). Prints image AUROC of each variant of the self-similarity
and batch modes.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/zeroshot_dev.py [mono|poly] [--max N]
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalygpt.images import batch_tensor, load_image
from anomalygpt.inspector import AnomalyGPT
from anomalygpt.zeroshot import modes
from anomalygpt.zeroshot.batch_mutual import mutual_scores
from anomalygpt.zeroshot.features import average_maps, encoder_patches
from anomalygpt.zeroshot.self_similarity import self_similarity_scores
from data_sim.datasets import elpv_split
from data_sim.nsa import synthesize

N_CLEAN = 150


def dev_set(kind: str, n_max: int, faint: bool = False, mode: str = "mix") -> tuple[list[np.ndarray], np.ndarray]:
    """`mode`: the simulator's anomaly kind ("mix" draws one per anomaly; "crack" gives every
    anomalous cell the same kind, so defects recur across the batch as real line defects do and
    a crack meets look-alike cracks in other cells, which mixed kinds rarely do).
    `faint`: each simulated anomaly is blended back towards the clean cell, keeping 25-50%
    of its change (seeded per image). The plain dev sets are saturated (0.96-0.97 AUROC on
    mono against 0.83-0.87 on the test split), so they cannot rank settings whose test gap is a
    few hundredths; fainter defects bring the dev AUROC down to where differences show. A
    generator's parameter the training simulation never used, not a test image."""
    train = elpv_split(kind)["train"]
    order = np.random.default_rng(1).permutation(len(train))[:n_max]
    paths = [train[i].image_path for i in order]
    images, labels = [], []
    for k, p in enumerate(paths):
        img = load_image(p)
        if k >= N_CLEAN:
            syn = synthesize(img, np.random.default_rng([7, k]), sources=paths[N_CLEAN:], texture=True, mode=mode)
            img = syn.image
            if faint:
                keep = np.random.default_rng([9, k]).uniform(0.25, 0.5)
                clean = load_image(p).astype(np.float32)
                img = np.clip(np.rint(clean + keep * (img.astype(np.float32) - clean)), 0, 255).astype(np.uint8)
            labels.append(syn.label)
        else:
            labels.append(0)
        images.append(img)
    return images, np.array(labels)


def load_dev(name: str, n_max: int = 500) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(images, kinds, groups) of one zero-shot dev set: "mono" / "poly" = `dev_set` (kinds
    "good" / "sim", one group), "textures" = benchmarks/detector_dev.textures_dev (one group,
    i.e. one batch, per texture); "mono-faint" / "poly-faint" = `dev_set(faint=True)`, "textures-small" = textures plus its
    2-5 px dev defects (detector_dev.small_defect); "mono-crack" / "poly-crack" (and
    "-faint-crack") = `dev_set(mode="crack")`, one recurring anomaly kind.
    The other zero-shot dev scripts all start here."""
    if name in ("textures", "textures-small"):
        from benchmarks.detector_dev import textures_dev

        imgs, kinds, _, groups = textures_dev(with_small=name == "textures-small")
        return imgs, np.array(kinds), np.array(groups)
    kind, *flags = name.split("-")
    if kind not in ("mono", "poly") or not set(flags) <= {"faint", "crack"} or len(set(flags)) < len(flags):
        raise ValueError(f"unknown dev set {name!r}; use mono or poly (with -faint and/or -crack), textures or "
                         "textures-small")
    imgs, labels = dev_set(kind, n_max, faint="faint" in flags, mode="crack" if "crack" in flags else "mix")
    return imgs, np.array(["sim" if v else "good" for v in labels]), np.array([name] * len(imgs))


def dev_encoder():
    """The shipped checkpoint's frozen encoder, on one thread (dev runs share the machine)."""
    torch.set_num_threads(1)
    return AnomalyGPT.from_pretrained("embedded", with_llm=False).detector.encoder


def dev_batches(name: str, n_max: int = 500):
    """Each batch of a zero-shot dev set, one per group (a texture, or the whole ELPV set):
    yields (group, its kinds, its images as a 224 px tensor)."""
    imgs, kinds, groups = load_dev(name, n_max)
    x = batch_tensor(imgs, 224)
    for grp in sorted(set(groups)):
        sel = np.flatnonzero(groups == grp)
        yield grp, kinds[sel], x[torch.from_numpy(sel)]


def dev_first_pass(enc, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, np.ndarray]:
    """The batch mode's first pass as the dev scripts run it (224 px, 100 partners, fraction
    0.3): (patch features, grid, map at 224 px, image scores)."""
    feats, (h, w), _ = encoder_patches(enc, x, 224)
    first = average_maps([mutual_scores(feats, 100, 0.3).view(-1, 1, h, w)], (224, 224))
    return feats, (h, w), first, image_scores(first)


def add_aurocs(rows: dict[str, dict[str, list[float]]], name: str, scores: np.ndarray, kinds: np.ndarray) -> None:
    """Append the AUROC of each anomaly kind (its images vs the good ones) and of all kinds
    to rows[name][kind]; averaged over groups when printed."""
    for kind in sorted(set(kinds) - {"good"}) + ["all"]:
        use = (kinds == "good") | (kinds == kind) if kind != "all" else np.ones(len(kinds), bool)
        rows.setdefault(name, {}).setdefault(kind, []).append(roc_auc_score(kinds[use] != "good", scores[use]))


def print_aurocs(rows: dict[str, dict[str, list[float]]]) -> None:
    for name, per_kind in rows.items():
        print(f"{name:18s} " + " ".join(f"{kind} {np.mean(v):.3f}" for kind, v in per_kind.items()), flush=True)


class DevScores:
    """A dev run's image scores, batch by batch: per variant the AUROCs (`add_aurocs`, printed
    at the end) and the scores themselves with each image's kind and group, saved as one npz
    (what benchmarks/zeroshot_fusion_gate_dev.py reads)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, list[float]]] = {}
        self.saved: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, scores: np.ndarray, kinds: np.ndarray) -> None:
        add_aurocs(self.rows, name, scores, kinds)
        self.saved.setdefault(name, []).append(scores)

    def end_batch(self, group: str, kinds: np.ndarray) -> None:
        self.saved.setdefault("kinds", []).append(kinds)
        self.saved.setdefault("groups", []).append(np.array([group] * len(kinds)))

    def finish(self, save: str = "") -> None:
        print_aurocs(self.rows)
        if save:
            np.savez(save, **{k: np.concatenate(v) for k, v in self.saved.items()})


def image_scores(amap: torch.Tensor) -> np.ndarray:
    """The shipped image score (modes.image_scores) at the dev scripts' sigma of 4 px."""
    return modes.image_scores(amap, 4.0).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", nargs="?", default="mono")
    ap.add_argument("--max", type=int, default=500)
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--sizes", default="192,224,256,288,320")
    ap.add_argument("--windows", default="1,2,3,4")
    ap.add_argument("--combos", default="224+288;192+256+320;224+256+288+320;256+320")
    ap.add_argument("--batch", default="224:50:0.3;224:100:0.1;224:100:0.3;224:100:0.5;256:50:0.3;256:100:0.1;"
                    "256:100:0.3;256:100:0.5", help="size:M:fraction;...")
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    windows = [int(v) for v in args.windows.split(",")]
    combos = [tuple(int(v) for v in c.split("+")) for c in args.combos.split(";") if c]
    torch.set_num_threads(1)
    enc = AnomalyGPT.from_pretrained("embedded", with_llm=False).detector.encoder
    images, y = dev_set(args.kind, args.max)
    print(f"dev set {args.kind}: {len(y)} images, {int(y.sum())} with simulated anomalies", flush=True)
    x = batch_tensor(images, max(sizes))
    feats = {}
    for s in sizes:
        t0 = time.perf_counter()
        feats[s] = encoder_patches(enc, x, s)
        print(f"encode {s}: {time.perf_counter() - t0:.1f}s grid {feats[s][1]}", flush=True)
    out = (224, 224)
    self_maps = {}
    for s, wnd in itertools.product(feats, windows):
        f, (h, w), _ = feats[s]
        m = torch.cat([self_similarity_scores(f[i:i + 32], h, w, wnd) for i in range(0, len(f), 32)])
        self_maps[s, wnd] = m
        print(f"self size {s} window {wnd}: AUROC {roc_auc_score(y, image_scores(average_maps([m], out))):.3f}", flush=True)
    for wnd in windows:
        for scales in combos:
            m = average_maps([self_maps[s, wnd] for s in scales], out)
            print(f"self scales {scales} window {wnd}: AUROC {roc_auc_score(y, image_scores(m)):.3f}", flush=True)
    if args.skip_batch:
        return
    for item in args.batch.split(";"):
        s, m_cmp, frac = int(item.split(":")[0]), int(item.split(":")[1]), float(item.split(":")[2])
        f, (h, w), _ = feats[s]
        if True:
            t0 = time.perf_counter()
            sc = mutual_scores(f, m_cmp, frac).view(-1, 1, h, w)
            print(f"batch size {s} M {m_cmp} frac {frac}: AUROC {roc_auc_score(y, image_scores(average_maps([sc], out))):.3f} "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
