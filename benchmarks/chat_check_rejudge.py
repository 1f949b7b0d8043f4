"""Re-judge a saved chat_check run with the current claim checker, and split the LLM's
failures into contradictions (it said something the report denies) and omissions (it left
out the claim the question asks for, e.g. no cell in a 'where' answer).

    python benchmarks/chat_check_rejudge.py out/chat_check_object.json

The reports are rebuilt by inspecting the same images against the same seeded references
(detector only: deterministic and quick), so no LLM runs here.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from anomalygpt.chat.claims import check_answer
from anomalygpt.evaluation.chat_check import question_intent
from anomalygpt.evaluation.harness import dataset_groups, pick_references
from anomalygpt.inspector import AnomalyGPT

OMISSION = ("does not", "states no", "misses cells", "empty answer")


def main(path: str) -> None:
    run = json.loads(Path(path).read_text())
    assistant = AnomalyGPT.from_pretrained(run["checkpoint"], with_llm=False)
    refs = {g.name: assistant.build_references([s.image_path for s in pick_references(g.train_normals, run["shots"],
                                                                                     run["seed"])])
            for g in dataset_groups(run["dataset"])}
    stats: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in run["rows"]:
        report = assistant.inspect(row["image"], refs[row["group"]], object_name=run["object"], question=None)
        for t in row["turns"]:
            intent = question_intent(t["kind"], t["question"])
            s = stats[t["kind"]]
            s["n"] += 1
            s["shown_ok"] += check_answer(report, intent, t["answer"]).ok
            llm = check_answer(report, intent, t["llm"])
            if llm.ok:
                s["llm_ok"] += 1
            elif all(p.startswith(OMISSION) for p in llm.problems):
                s["llm_omits"] += 1
            else:
                s["llm_contradicts"] += 1
    total: dict[str, int] = defaultdict(int)
    print(f"{'intent':16s} {'shown':>6s} {'LLM ok':>7s} {'contra':>7s} {'omits':>6s}   n")
    for kind, s in stats.items():
        for k, v in s.items():
            total[k] += v
        n = s["n"]
        print(f"{kind:16s} {s['shown_ok'] / n:6.3f} {s['llm_ok'] / n:7.3f} {s['llm_contradicts'] / n:7.3f} "
              f"{s['llm_omits'] / n:6.3f}  {n}")
    n = total["n"]
    print(f"{'all':16s} {total['shown_ok'] / n:6.3f} {total['llm_ok'] / n:7.3f} {total['llm_contradicts'] / n:7.3f} "
          f"{total['llm_omits'] / n:6.3f}  {n}")


if __name__ == "__main__":
    main(sys.argv[1])
