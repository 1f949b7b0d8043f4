"""The inspection report and the plain-text facts the LLM is grounded on.

The same `facts_text` is used to build training prompts (from ground-truth masks) and at
inference (from measured maps), so answers learnt in training agree with the report.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .grid import ALL_CELLS


@dataclass
class Region:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in original image pixels (x1, y1 exclusive)
    area_share: float               # share of the image area, 0..1
    centroid: tuple[float, float]   # (y, x) in original image pixels
    cell: str                       # 3x3 grid words, e.g. "top left"
    peak: float = 0.0               # max of the anomaly map inside the region


def size_word(share: float) -> str:
    """Words for a region's size; shared by training targets and answers."""
    if share < 0.01:
        return "very small"
    if share < 0.04:
        return "small"
    if share < 0.15:
        return "medium-sized"
    return "large"


def facts_text(score: float, threshold: float, regions: list[Region], object_name: str | None = None) -> str:
    """One paragraph of measured facts, in a fixed format the LLM learns to read."""
    verdict = "anomalous" if score >= threshold else "normal"
    obj = f" of the {object_name}" if object_name else ""
    parts = [f"Measured facts{obj}: anomaly score {score:.2f}, threshold {threshold:.2f}, verdict {verdict}."]
    if verdict == "anomalous" and regions:
        descr = "; ".join(f"{r.cell}, {100 * r.area_share:.1f}% of the image ({size_word(r.area_share)})" for r in regions)
        parts.append(f"{len(regions)} region{'s' if len(regions) > 1 else ''}: {descr}.")
        clean = [c for c in ALL_CELLS if c not in {r.cell for r in regions}]
        parts.append(f"Clean cells: {', '.join(clean)}.")
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

    @property
    def is_anomalous(self) -> bool:
        return self.score >= self.threshold

    @property
    def verdict(self) -> str:
        return "anomalous" if self.is_anomalous else "normal"

    def facts(self) -> str:
        return facts_text(self.score, self.threshold, self.regions if self.is_anomalous else [], self.object_name)

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
            "object_name": self.object_name,
            "regions": [asdict(r) for r in self.regions] if self.is_anomalous else [],
            "answer": self.answer,
        }

    def summary(self) -> str:
        head = f"{self.source or 'image'}: {self.verdict.upper()} (score {self.score:.3f}, threshold {self.threshold:.3f}, {self.threshold_source})"
        lines = [head]
        if self.is_anomalous:
            for i, r in enumerate(self.regions, 1):
                lines.append(f"  region {i}: {r.cell}, {100 * r.area_share:.1f}% of the image, box x{r.box[0]}-{r.box[2]} y{r.box[1]}-{r.box[3]}")
        if self.answer:
            lines.append(f"  answer: {self.answer}")
        return "\n".join(lines)
