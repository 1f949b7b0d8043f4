"""The public API: `AnomalyGPT.from_pretrained(...).inspect(image, references)` and `.ask`.

An inspection runs the detector (decoder map, fused with the nearest-neighbour map of the
normal references when given), decides the verdict against a calibrated threshold,
measures the regions, and lets the LLM answer grounded on those measured facts.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from . import checkpoint as model_io
from .calibrate import reference_views, separating_threshold, threshold_rule
from .models.detector import gaussian_blur
from .images import ImageLike, batch_tensor, crop_to_content, fine_tensor, letterbox, load_image, resize_map
from .models.memory_bank import MemoryBank
from .chat.answer import ChatAnswer, finish, plan, record
from .chat.grounded import IGNORE_PREFIX, canonical_question, flip_opening, flips, prefix, trained_history
from .chat.intents import Intent, recognize
from .report import InspectionReport, Region
from .zeroshot.modes import ZeroShotContext, ZeroShotMode, ZeroShotResult, get_mode

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKPOINTS = {"embedded": PACKAGE_DIR / "checkpoints" / "embedded"}
DEFAULT_QUESTION = "Is there any anomaly in the image?"
MIN_REGION_SHARE = 0.001  # regions under 0.1% of the image are noise, not findings
MIN_LOO_FOR_SCALE = 4     # fewer leave-one-out scores give no usable spread: use the checkpoint's scale
VIEWS_PER_REFERENCE = 12  # normal views and simulated anomalies per reference for the 1-3 reference threshold
MAX_HISTORY_TURNS = 4     # llm_history "full" and the unchecked LLM: only the latest turns reach the prompt


@dataclass
class ReferenceSet:
    """Normal references turned into a memory bank, with the threshold they imply."""
    bank: MemoryBank
    n: int
    threshold: float | None
    source: str
    ref_scale: float | None = None  # spread of the reference map on this set (None: checkpoint's)


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    if str(path_or_name) in CHECKPOINTS:
        path = CHECKPOINTS[str(path_or_name)]
        if not (path / model_io.CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"the bundled '{path_or_name}' checkpoint is missing at {path}; reinstall the package "
                "or train one: anomalygpt train --config configs/embedded.yaml")
        return path
    path = Path(path_or_name).expanduser()
    if not (path / model_io.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected {model_io.CONFIG_FILE}); give a folder "
                                f"written by 'anomalygpt train' or one of: {', '.join(CHECKPOINTS)}")
    return path


class AnomalyGPT:
    """Inspect images, optionally against a few normal references, and answer questions."""

    def __init__(self, components: model_io.Components, encoder_runtime: str | None = None,
                 llm_runtime: str | None = None) -> None:
        """`encoder_runtime` overrides the checkpoint's encoder.runtime ("auto", "torch",
        "onnxruntime"; see anomalygpt.onnx_encoder), `llm_runtime` its llm.runtime ("auto",
        "torch", "llama.cpp"; see anomalygpt.llama_runtime)."""
        from .llama_runtime import RUNTIMES, select_decoder
        from .onnx_encoder import select_encoder

        self.components = components
        self.cfg = components.cfg
        self.detector = components.detector.eval()
        if encoder_runtime is not None:
            if encoder_runtime not in ("auto", "torch", "onnxruntime"):
                raise ValueError(f"encoder runtime '{encoder_runtime}' is unknown; use auto, torch or onnxruntime")
            self.cfg.encoder.runtime = encoder_runtime
        self.detector.encoder = select_encoder(self.cfg.encoder, self.detector.encoder)
        self.lvlm = components.lvlm.eval() if components.lvlm is not None else None
        if self.lvlm is not None:
            self.lvlm.merge_lora()  # this object only infers
            self.lvlm.compact_for_decoding(self.cfg.llm.decode_weights)
            if llm_runtime is not None:
                if llm_runtime not in RUNTIMES:
                    raise ValueError(f"LLM runtime '{llm_runtime}' is unknown; use {', '.join(RUNTIMES)}")
                self.cfg.llm.runtime = llm_runtime
            # greedy answers through llama.cpp when selected; torch keeps sampling and training
            self.lvlm.token_decoder = select_decoder(self.cfg.llm, components.source)
        self.calibration = components.calibration
        # every answer is routed by intent and checked against the report (anomalygpt.chat);
        # False gives the bare LLM on the user's wording (chat_check --no-checker measures it)
        self.check_answers = True
        # "trained": earlier turns reach the LLM cut to the shape of the training chats
        # (chat.grounded.trained_history); "full": the latest MAX_HISTORY_TURNS turns, as before.
        # Callers pass the whole chat; the cut is made here, so no caller can drop the main turn
        self.llm_history = "trained"

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path = "embedded", with_llm: bool = True,
                        allow_pickle: bool = False, encoder_runtime: str | None = None,
                        llm_runtime: str | None = None) -> "AnomalyGPT":
        """Load a checkpoint folder (or 'embedded', the one shipped with the package). A folder
        holding pickle files is refused unless `allow_pickle` (they can run code when loaded).
        `encoder_runtime`: "torch", "onnxruntime" or "auto" instead of the checkpoint's setting;
        `llm_runtime`: "torch", "llama.cpp" or "auto" likewise."""
        return cls(model_io.load(resolve_checkpoint(path_or_name), with_llm=with_llm, fold_lora=True,
                                 allow_pickle=allow_pickle), encoder_runtime=encoder_runtime,
                   llm_runtime=llm_runtime)

    # ------------------------------------------------------------------ references
    @torch.no_grad()
    def build_references(self, references: Sequence[ImageLike]) -> ReferenceSet:
        """Memory bank of k normal images, and a threshold from leave-one-out scores.

        A reference scored against the bank of the others shows how far a *normal* part of
        this product lies from the rest, which calibrates the verdict for this product
        without a hand-set number. At most `memory.max_loo` references are held out in turn
        (each against all the others), so hundreds of references stay cheap. Under
        MIN_LOO_FOR_SCALE (4) references the checkpoint's threshold is used instead: one
        reference gives no estimate, and the spread of two or three is mostly noise (on
        ELPV at 2 shots the leave-one-out rule gave verdict accuracy 0.676 / 0.617 mono /
        poly, the checkpoint's threshold 0.726 / 0.631).
        """
        if not references:
            raise ValueError("references is empty; give 1-8 images of normal parts (or more) or None")
        rgb = [load_image(r) for r in references]
        x = batch_tensor(rgb, self.detector.image_size)
        size = (x.shape[-2], x.shape[-1])
        fine = self._fine_inputs(rgb)
        bank = self.detector.build_bank(x, fine=fine)
        threshold, source = None, f"checkpoint calibration ({self.calibration.source})"
        ref_scale = None
        if len(x) < MIN_LOO_FOR_SCALE and self.cfg.memory.few_threshold == "views":
            threshold, source = self._views_threshold(rgb, bank)
        if len(x) >= MIN_LOO_FOR_SCALE:
            n_loo = min(len(x), self.cfg.memory.max_loo)
            held = np.linspace(0, len(x) - 1, n_loo).round().astype(int)
            maps, _ = self.detector.encode(x[held])
            dec_map = self.detector.decoder(maps, size)[0]
            feats = self.detector.encode_fine([fine[i] for i in held]) if fine is not None else None
            # each held-out reference against the bank of the others (one copy of that bank
            # at a time); fused only once the set's own ref_scale is known, so no fusion with
            # the checkpoint's scale is wasted
            ref_maps, dists = [], []
            for j, i in enumerate(held):
                one, others = [m[j:j + 1] for m in maps], bank.without(int(i))
                ref_maps.append(self.detector.reference_map(one, size=size, bank=others,
                                                            fine=feats.subset(j) if feats is not None else None))
                dists.append(self.detector.distribution(one, others))
            ref_map = torch.cat(ref_maps)
            ref_scores = self.detector.image_score(ref_map).numpy().astype(np.float64)
            if n_loo >= MIN_LOO_FOR_SCALE:
                ref_scale = max(float(ref_scores.std()), 1e-4)
            dist = None if dists[0] is None else torch.cat(dists)
            s = self.detector.total_score(self.detector.fuse(dec_map, ref_map, ref_scale), dist).numpy().astype(np.float64)
            # the checkpoint's rule on the held-out references' scores; their max alone is
            # ruled by the one odd reference and sat above most real defects on ELPV
            threshold = threshold_rule(s)[0]
            source = f"leave-one-out over {n_loo} of {len(x)} references"
        return ReferenceSet(bank, len(x), threshold, source, ref_scale)

    def _fine_inputs(self, rgb: list[np.ndarray]) -> list[torch.Tensor] | None:
        """The fine level's inputs from the images' own pixels (None when memory.hires is off)."""
        mode = self.cfg.memory.hires
        return None if mode == "off" else [fine_tensor(im, mode, self.detector.image_size) for im in rgb]

    def _views_threshold(self, rgb: list[np.ndarray], bank: MemoryBank) -> tuple[float, str]:
        """Threshold for 1-3 references from views of the references themselves
        (calibrate.reference_views): each view is scored against the bank of the other
        references (a single reference: against its own bank, the best that exists), and
        the cut that best separates the normal views from the simulated anomalies is taken."""
        n = VIEWS_PER_REFERENCE
        normal, anomalous, owner = reference_views(rgb, n, flips=self.cfg.memory.orientations == "dihedral")
        size = self.detector.image_size
        scores = {"n": [], "a": []}
        for i in range(len(rgb)):
            b = bank.without(i) if len(rgb) > 1 else bank
            idx = [k for k, o in enumerate(owner) if o == i]
            for key, views in (("n", normal), ("a", anomalous)):
                x = batch_tensor([views[k] for k in idx], size)
                scores[key].append(self.detector(x, b).scores.numpy().astype(np.float64))
        thr, bal = separating_threshold(np.concatenate(scores["n"]), np.concatenate(scores["a"]))
        against = "the other references" if len(rgb) > 1 else "the reference itself"
        return thr, (f"views of the {len(rgb)} reference{'s' if len(rgb) > 1 else ''}: {n * len(rgb)} normal crops "
                     f"and {n * len(rgb)} with simulated anomalies against {against}, best separating cut "
                     f"(balanced accuracy {bal:.2f})")

    # ------------------------------------------------------------------ inspection
    @torch.no_grad()
    def inspect(self, image: ImageLike, references: Sequence[ImageLike] | ReferenceSet | None = None,
                object_name: str | None = None, question: str | None = DEFAULT_QUESTION,
                zero_shot: str | None = None) -> InspectionReport:
        """Inspect one image. `question=None` skips the LLM (detector-only).

        `zero_shot`: a training-free mode of `anomalygpt.zeroshot.MODES` ("self": the image
        against itself; "batch" needs several images, see `inspect_many`); None takes the
        config's `zero_shot.mode` ("" = the trained decoder, with the references if given)."""
        return next(iter(self.inspect_many([image], references, object_name=object_name, question=question,
                                           zero_shot=zero_shot)))

    def _as_refs(self, references: Sequence[ImageLike] | ReferenceSet | None) -> ReferenceSet | None:
        if references is None or isinstance(references, ReferenceSet):
            return references
        return self.build_references(list(references))

    def zero_shot_mode(self, zero_shot: str | None, references: object = None) -> ZeroShotMode | None:
        """The zero-shot mode of a call (its argument, else the config's), or None for the
        trained decoder. References and a zero-shot mode together are refused: the modes
        are for parts without good photos, and silently ignoring given photos would mislead."""
        name = self.cfg.zero_shot.mode if zero_shot is None else zero_shot
        name = (name or "").strip().lower()
        if name in ("", "off", "none"):
            return None
        mode = get_mode(name)
        if references is not None and not (isinstance(references, (list, tuple)) and not references):
            raise ValueError(f"zero-shot mode '{name}' uses no reference images; drop the references or the "
                             "zero-shot mode (references give the few-shot mode)")
        return mode

    @torch.no_grad()
    def inspect_many(self, images: Iterable[ImageLike], references: Sequence[ImageLike] | ReferenceSet | None = None,
                     object_name: str | None = None, question: str | None = DEFAULT_QUESTION,
                     batch_size: int = 8, zero_shot: str | None = None) -> Iterator[InspectionReport]:
        """Inspect a stream of images in batches; yields one report per image, in order.

        With a zero-shot mode that compares images with each other ("batch"), the whole
        stream is read first and scored as one set; the reports then follow in order."""
        mode = self.zero_shot_mode(zero_shot, references)
        if mode is not None:
            yield from self._inspect_zero_shot(images, mode, object_name, question, batch_size)
            return
        refs = self._as_refs(references)
        batch: list[tuple[np.ndarray, str | None]] = []
        for img in images:
            batch.append((load_image(img), str(img) if isinstance(img, (str, Path)) else None))
            if len(batch) == batch_size:
                yield from self._inspect_batch(batch, refs, object_name, question)
                batch = []
        if batch:
            yield from self._inspect_batch(batch, refs, object_name, question)

    def threshold_for(self, refs: ReferenceSet | None) -> tuple[float, str]:
        if refs is not None and refs.threshold is not None:
            return refs.threshold, refs.source
        cal = self.calibration
        few = (f"; {refs.n} references are too few for leave-one-out, which needs {MIN_LOO_FOR_SCALE}"
               if refs is not None and refs.n > 1 else "")
        if refs is not None and "fused_threshold" in cal.extra:
            return float(cal.extra["fused_threshold"]), f"checkpoint calibration with references ({cal.source}{few})"
        return float(cal.threshold), f"checkpoint calibration ({cal.source}{few})"

    def _inspect_batch(self, batch: list[tuple[np.ndarray, str | None]], refs: ReferenceSet | None,
                       object_name: str | None, question: str | None) -> list[InspectionReport]:
        size = self.detector.image_size
        x = batch_tensor([b[0] for b in batch], size)
        fine = self._fine_inputs([b[0] for b in batch]) if refs is not None and refs.bank.fine is not None else None
        det = self.detector(x, refs.bank if refs is not None else None, refs.ref_scale if refs is not None else None,
                            fine=fine)
        threshold, source = self.threshold_for(refs)
        smooth = gaussian_blur(det.anomaly_map, self.detector.smooth_sigma)
        reports = []
        for i, (rgb, name) in enumerate(batch):
            h, w = rgb.shape[:2]
            amap = resize_map(smooth[i, 0].numpy(), h, w)
            score = float(det.scores[i])
            mask, regions = measure(amap, score, threshold)
            reports.append(InspectionReport(
                score=score, threshold=threshold, threshold_source=source, anomaly_map=amap, mask=mask,
                regions=regions, image_size=(h, w),
                n_references=refs.n if refs is not None else 0, object_name=object_name, source=name,
                mode="decoder+references" if refs is not None else "decoder"))
            reports[-1]._model_inputs = (det.global_emb[i:i + 1], det.anomaly_map[i:i + 1])  # for follow-ups
        self._answer(reports, question)
        return reports

    def _inspect_zero_shot(self, images: Iterable[ImageLike], mode: ZeroShotMode, object_name: str | None,
                           question: str | None, batch_size: int) -> Iterator[InspectionReport]:
        items = ((load_image(img), str(img) if isinstance(img, (str, Path)) else None) for img in images)
        if mode.needs_batch:
            batch = list(items)
            if not batch:
                return
            res = self._zero_shot_scores(batch, mode, object_name)
            for i in range(0, len(batch), batch_size):
                sl = slice(i, i + batch_size)
                yield from self._zero_shot_reports(batch[sl], res, sl, mode, object_name, question)
            return
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == batch_size:
                res = self._zero_shot_scores(batch, mode, object_name)
                yield from self._zero_shot_reports(batch, res, slice(0, len(batch)), mode, object_name, question)
                batch = []
        if batch:
            res = self._zero_shot_scores(batch, mode, object_name)
            yield from self._zero_shot_reports(batch, res, slice(0, len(batch)), mode, object_name, question)

    def _zero_shot_scores(self, batch: list[tuple[np.ndarray, str | None]], mode: ZeroShotMode,
                          object_name: str | None) -> ZeroShotResult:
        size = self.detector.image_size
        images = [b[0] for b in batch]
        boxes = None
        if mode.keep_aspect:  # padded, not squashed; the maps are cropped back in _zero_shot_reports
            images, boxes = map(list, zip(*(letterbox(im) for im in images)))
        x = batch_tensor(images, mode.input_size(self.cfg.zero_shot, size))
        ctx = ZeroShotContext(self.detector.encoder, self.cfg.zero_shot, size, self.detector.smooth_sigma, object_name)
        res = mode.scorer(x, ctx)
        if boxes is not None:
            res.info["content_boxes"] = boxes
        return res

    def _zero_shot_reports(self, batch: list[tuple[np.ndarray, str | None]], res: ZeroShotResult, sl: slice,
                           mode: ZeroShotMode, object_name: str | None, question: str | None) -> list[InspectionReport]:
        amaps = res.anomaly_map[sl]
        smooth = gaussian_blur(amaps, self.detector.smooth_sigma)
        scores, thresholds, glob = res.scores[sl], res.thresholds[sl], res.global_emb[sl]
        reports = []
        boxes = res.info.get("content_boxes")
        for i, (rgb, name) in enumerate(batch):
            h, w = rgb.shape[:2]
            square = smooth[i, 0].numpy()
            amap = resize_map(square if boxes is None else crop_to_content(square, boxes[sl][i]), h, w)
            score, threshold = float(scores[i]), float(thresholds[i])
            mask, regions = measure(amap, score, threshold)
            reports.append(InspectionReport(
                score=score, threshold=threshold, threshold_source=res.threshold_source, anomaly_map=amap, mask=mask,
                regions=regions, image_size=(h, w), n_references=0, object_name=object_name, source=name,
                mode=f"zero-shot:{mode.name}"))
            # the LLM's map tokens were trained on probability maps: the threshold goes to 0.5
            llm_map = (0.5 * amaps[i:i + 1] / max(threshold, 1e-6)).clamp(0, 1)
            reports[-1]._model_inputs = (glob[i:i + 1], llm_map)
        self._answer(reports, question)
        return reports

    def _answer(self, reports: list[InspectionReport], question: str | None) -> None:
        """The first answer of each report: the LLM's, checked against the report unless
        `check_answers` is off (anomalygpt.chat)."""
        if not (question and self.lvlm is not None and reports):
            return
        if not self.check_answers:
            answers = self.lvlm.generate(torch.cat([r._model_inputs[0] for r in reports]),
                                         torch.cat([r._model_inputs[1] for r in reports]),
                                         [question] * len(reports), facts=[r.facts() for r in reports])
            for r, a in zip(reports, answers):
                r.answer = a
            return
        plans = [plan(r, question) for r in reports]
        asked = [i for i, (_, q) in enumerate(plans) if q is not None]
        raw: dict[int, str] = {}
        if asked:
            answers = self.lvlm.generate(torch.cat([reports[i]._model_inputs[0] for i in asked]),
                                         torch.cat([reports[i]._model_inputs[1] for i in asked]),
                                         [plans[i][1] for i in asked], facts=[reports[i].facts() for i in asked])
            raw = dict(zip(asked, answers))
        for i, r in enumerate(reports):
            done = finish(r, question, plans[i][0], raw.get(i))
            r.answer, r.answer_corrected = done.text, done.corrected
            record(r, done)

    # ------------------------------------------------------------------ chat
    @torch.no_grad()
    def ask(self, report: InspectionReport, question: str, history: list[tuple[str, str]] | None = None) -> str:
        """Answer a follow-up about an inspected image, grounded on the report's facts."""
        return self.answer(report, question, history).text

    @torch.no_grad()
    def answer(self, report: InspectionReport, question: str,
               history: list[tuple[str, str]] | None = None) -> ChatAnswer:
        """`ask` with its record: the LLM's own answer, the intent, and whether the claim checker
        replaced it (also appended to `report.turns`)."""
        if self.lvlm is None:
            raise RuntimeError("this assistant was loaded without the LLM; use from_pretrained(..., with_llm=True)")
        glob, amap = self._inputs_of(report)
        if not self.check_answers:
            text = self.lvlm.generate(glob, amap, [question], facts=[report.facts()], histories=[list(history or [])[-MAX_HISTORY_TURNS:]])[0]
            done = ChatAnswer(question, text, "unchecked", text)
        else:
            t0 = time.perf_counter()
            intent, asked = plan(report, question)
            spent = time.perf_counter() - t0
            raw = None
            if asked is not None:
                raw = self.lvlm.generate(glob, amap, [asked], facts=[report.facts()],
                                         histories=[self._llm_history(report, history, intent)])[0]
            done = finish(report, question, intent, raw, spent_s=spent)
        record(report, done)
        return done

    def stream_ask(self, report: InspectionReport, question: str, history: list[tuple[str, str]] | None = None,
                   max_new_tokens: int | None = None, min_new_tokens: int = 0) -> Iterator[str]:
        """Like `ask`, but yields the answer in pieces while it is generated (for chats).

        The LLM's pieces are shown as they come; once the stream ends, the answer is checked
        against the report and recorded on `report.turns[-1]` (a ChatAnswer dict): when its
        "corrected" is true, the text the user must see is its "text", not what streamed."""
        if self.lvlm is None:
            raise RuntimeError("this assistant was loaded without the LLM; use from_pretrained(..., with_llm=True)")
        glob, amap = self._inputs_of(report)
        if not self.check_answers:
            return self.lvlm.stream_generate(glob, amap, question, facts=report.facts(),
                                             history=list(history or [])[-MAX_HISTORY_TURNS:],
                                             max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
        t0 = time.perf_counter()
        intent, asked = plan(report, question)
        spent = time.perf_counter() - t0
        if asked is None:
            return self._stream_fixed(report, question, intent)
        pieces = self.lvlm.stream_generate(glob, amap, asked, facts=report.facts(),
                                           history=self._llm_history(report, history, intent),
                                           max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
        return self._stream_checked(report, question, intent, pieces, spent)

    def _stream_fixed(self, report: InspectionReport, question: str, intent) -> Iterator[str]:
        done = finish(report, question, intent, None)
        record(report, done)
        yield done.text

    def _stream_checked(self, report: InspectionReport, question: str, intent, pieces: Iterator[str],
                        spent: float) -> Iterator[str]:
        """The LLM's pieces in the user's polarity (the opening yes/no is held back until it is
        whole, then turned round if needed); the checked answer is recorded at the end."""
        raw, head_done = "", not flips(intent)
        if prefix(intent):
            yield prefix(intent)
        for piece in pieces:
            raw += piece
            if head_done:
                yield piece
            elif len(raw.lstrip()) >= 4 or any(not ch.isalpha() for ch in raw.lstrip()):
                head_done = True
                yield flip_opening(raw)
        if not head_done and raw:
            yield flip_opening(raw)
        record(report, finish(report, question, intent, raw.strip(), spent_s=spent))

    def _llm_history(self, report: InspectionReport, history: list[tuple[str, str]] | None,
                     current: Intent | None = None) -> list[tuple[str, str]]:
        """Earlier turns as the LLM was trained on them: each question in its trained form and
        the answer in that form's polarity; off-topic turns are left out; with `current` (the
        intent now asked) and llm_history "trained", cut to the training chats' shape; otherwise
        the latest MAX_HISTORY_TURNS turns (prompt length, hence CPU time, grows with each)."""
        out = []
        for q, a in history or []:
            intent = recognize(q)
            asked = canonical_question(intent, report)
            if asked is None:
                continue
            a = a[len(IGNORE_PREFIX):] if a.startswith(IGNORE_PREFIX) else a
            out.append((asked, flip_opening(a) if flips(intent) else a))
        if self.llm_history == "trained" and current is not None:
            return trained_history(current, out)
        return out[-MAX_HISTORY_TURNS:]

    def _inputs_of(self, report: InspectionReport) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = getattr(report, "_model_inputs", None)
        if inputs is None:
            raise ValueError("this report has no model inputs (was it loaded from JSON?); inspect the image again")
        return inputs


def measure_regions(mask: np.ndarray, amap: np.ndarray, min_share: float = MIN_REGION_SHARE) -> list[Region]:
    """Regions of a predicted mask, largest first (as in the training answers, where "the
    anomaly" is the biggest one), in the report's (x0, y0, x1, y1) boxes."""
    from data_sim.regions import regions_from_mask

    h, w = mask.shape
    out = []
    for r in regions_from_mask(mask, min_area=max(1, int(min_share * h * w))):
        y0, x0, y1, x1 = r["box"]
        out.append(Region.from_measured(r, peak=float(amap[y0:y1, x0:x1].max())))
    return out


def measure(amap: np.ndarray, score: float, threshold: float) -> tuple[np.ndarray, list[Region]]:
    """(mask, regions) of a smoothed map: the pixels at or above the threshold, and only when
    the image's verdict is anomalous (a normal verdict reports no region).

    An anomalous verdict always comes with at least one region: when nothing above the
    threshold reaches the size floor (a faint, small peak; or the map's resize to the
    image's size lowered the peak under the threshold), the peak's own component is
    reported. Without it the facts read "anomalous, no region", a case the LLM never saw in
    training, and it answered "no" against the verdict (4 of 100 ELPV images at 4 shots).
    """
    if score < threshold:
        return np.zeros(amap.shape, bool), []
    mask = amap >= threshold
    regions = measure_regions(mask, amap)
    if not regions:
        import cv2

        peak = float(amap.max())
        _, labels = cv2.connectedComponents((amap >= min(threshold, peak)).astype(np.uint8), connectivity=8)
        y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
        mask = labels == labels[y, x]
        regions = measure_regions(mask, amap, min_share=0.0)
    return mask, regions
