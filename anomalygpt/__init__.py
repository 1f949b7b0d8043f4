"""AnomalyGPT-style conversational industrial inspection that runs offline on a CPU.

    from anomalygpt import AnomalyGPT
    assistant = AnomalyGPT.from_pretrained()          # the bundled embedded checkpoint
    report = assistant.inspect("part.png", references=["good1.png", "good2.png"])
    print(report.summary()); print(assistant.ask(report, "How big is it?"))
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["AnomalyGPT", "InspectionReport", "__version__"]


def __getattr__(name: str):  # lazy: `anomalygpt --help` must not pay for importing torch
    if name == "AnomalyGPT":
        from .inspector import AnomalyGPT
        return AnomalyGPT
    if name == "InspectionReport":
        from .report import InspectionReport
        return InspectionReport
    raise AttributeError(name)
