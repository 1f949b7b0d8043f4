"""The inspection report and the plain-text facts the LLM is grounded on.

The same `facts_text` is used to build training prompts (from ground-truth masks) and at
inference (from measured maps), so answers learnt in training agree with the report.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from data_sim.qa import SIDES, affected_cells, margin_word, percent, side_cells, size_word

from data_sim.grid import ALL_CELLS

MAX_FACT_REGIONS = 3  # the answers describe at most three regions; more only adds tokens


@dataclass
class Region:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in original image pixels (x1, y1 exclusive)
    area_share: float               # share of the image area, 0..1
    centroid: tuple[float, float]   # (y, x) in original image pixels
    cell: str                       # 3x3 grid words, e.g. "top left"
    peak: float = 0.0               # max of the anomaly map inside the region

    @classmethod
    def from_measured(cls, r: dict[str, Any], peak: float = 0.0) -> "Region":
        """From a `data_sim.regions` dict (box y0, x0, y1, x1) to the report's (x0, y0, x1, y1)."""
        y0, x0, y1, x1 = r["box"]
        return cls(box=(x0, y0, x1, y1), area_share=float(r["area_share"]), centroid=tuple(r["centroid"]),
                   cell=r["cell"], peak=peak)


def affected(mask: np.ndarray, regions: list[Region]) -> list[str]:
    """Cells holding a region's centre or a real share of the anomalous pixels (the rule the
    training answers use, so "is the left side OK?" agrees with the facts)."""
    return affected_cells(np.asarray(mask, bool), [{"cell": r.cell} for r in regions])


def facts_text(score: float, threshold: float, regions: list[Region], image_size: tuple[int, int],
               affected_list: list[str] | None = None, object_name: str | None = None) -> str:
    """One paragraph of measured facts, in a fixed format the LLM learns to read.

    Training builds it from ground-truth masks, inference from the measured map; the words
    (cells, size words, box fractions) are the ones the training answers use.
    """
    verdict = "anomalous" if score >= threshold else "normal"
    obj = f" of the {object_name}" if object_name else ""
    parts = [f"Measured facts{obj}: anomaly score {score:.2f}, threshold {threshold:.2f}, verdict {verdict} "
             f"({margin_word(score, threshold)} margin)."]
    if verdict == "anomalous" and regions:
        h, w = image_size
        descr = []
        for r in regions[:MAX_FACT_REGIONS]:
            x0, y0, x1, y1 = r.box
            descr.append(f"{r.cell}, {percent(r.area_share)} of the image ({size_word(r.area_share)}), "
                         f"x {x0 / w:.2f}-{x1 / w:.2f}, y {y0 / h:.2f}-{y1 / h:.2f}")
        more = f" (and {len(regions) - MAX_FACT_REGIONS} smaller)" if len(regions) > MAX_FACT_REGIONS else ""
        if len(regions) > 1:  # the total is stated, not left to the LLM to add up
            total = sum(r.area_share for r in regions)
            more += f", {percent(total)} of the image in all ({size_word(total)})"
        parts.append(f"{len(regions)} region{'s' if len(regions) > 1 else ''}{more}: {'; '.join(descr)}.")
        hit = affected_list if affected_list is not None else sorted({r.cell for r in regions})
        clean = [c for c in ALL_CELLS if c not in set(hit)]
        parts.append(f"Affected cells: {', '.join(hit)}. Clean cells: {', '.join(clean) or 'none'}.")
        # which sides hold an affected cell, so "is the left side OK?" is read, not inferred
        bad_sides = [s for s in SIDES if set(side_cells(s)) & set(hit)]
        ok_sides = [s for s in SIDES if s not in bad_sides]
        parts.append(f"Affected sides: {', '.join(bad_sides) or 'none'}. Clean sides: {', '.join(ok_sides) or 'none'}.")
    elif verdict == "anomalous":
        parts.append("No compact region stands out; the deviation is spread out.")
    return " ".join(parts)


@dataclass
class InspectionReport:
    score: float
    threshold: float
    threshold_source: str
    anomaly_map: np.ndarray = field(repr=False)   # H x W float32 at the original image size
    mask: np.ndarray = field(repr=False)          # H x W bool
    regions: list[Region]
    image_size: tuple[int, int]                   # (H, W) of the original image
    n_references: int = 0
    object_name: str | None = None
    source: str | None = None                     # file name, when known
    answer: str = ""
    answer_corrected: bool = False                # the claim checker replaced the LLM's first answer
    turns: list[dict[str, Any]] = field(default_factory=list, repr=False)  # chat turns (anomalygpt.chat.answer)
    mode: str = "decoder"                         # how the map was made: decoder, decoder+references, zero-shot:<name>

    @property
    def is_anomalous(self) -> bool:
        return self.score >= self.threshold

    @property
    def verdict(self) -> str:
        return "anomalous" if self.is_anomalous else "normal"

    @property
    def affected_cells(self) -> list[str]:
        """Cells with an anomaly (same rule as the training answers); empty when normal."""
        return affected(self.mask, self.regions) if self.is_anomalous and self.regions else []

    @property
    def clean_cells(self) -> list[str]:
        hit = set(self.affected_cells)
        return [c for c in ALL_CELLS if c not in hit]

    def facts(self) -> str:
        regions = self.regions if self.is_anomalous else []
        return facts_text(self.score, self.threshold, regions, self.image_size,
                          self.affected_cells or None, self.object_name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (maps left out: they go to image files)."""
        return {
            "source": self.source,
            "score": round(float(self.score), 4),
            "threshold": round(float(self.threshold), 4),
            "threshold_source": self.threshold_source,
            "verdict": self.verdict,
            "is_anomalous": self.is_anomalous,
            "image_size": list(self.image_size),
            "n_references": self.n_references,
            "mode": self.mode,
            "object_name": self.object_name,
            "regions": [asdict(r) for r in self.regions] if self.is_anomalous else [],
            "affected_cells": self.affected_cells,
            "clean_cells": self.clean_cells,
            "answer": self.answer,
            "answer_corrected": self.answer_corrected,
            "turns": list(self.turns),
        }

    def summary(self) -> str:
        head = f"{self.source or 'image'}: {self.verdict.upper()} (score {self.score:.3f}, threshold {self.threshold:.3f}, {self.threshold_source})"
        if self.mode.startswith("zero-shot"):  # the trained modes are named by their threshold source already
            head += f" [{self.mode}]"
        lines = [head]
        if self.is_anomalous:
            for i, r in enumerate(self.regions, 1):
                lines.append(f"  region {i}: {r.cell}, {100 * r.area_share:.1f}% of the image, box x{r.box[0]}-{r.box[2]} y{r.box[1]}-{r.box[3]}")
        if self.answer:
            lines.append(f"  answer: {self.answer}")
        return "\n".join(lines)
