"""The package layout is the architecture: every import runs downward (docs/architecture.md).

Layers, bottom first:
  data_sim              images, simulated anomalies, the 3x3 grid and the Q&A wording
  anomalygpt.models     pure torch pieces; may use only anomalygpt.config besides themselves
  anomalygpt            the library: config, hub, checkpoint, inspector (public API), report
  anomalygpt.evaluation metrics, eval harness, bench, chat check
  training              the training loop
  apps                  anomalygpt.cli, anomalygpt.__main__, chat_ui
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("anomalygpt", "data_sim", "training", "chat_ui")


def layer(module: str) -> str:
    if module in ("anomalygpt.cli", "anomalygpt.__main__") or module.startswith("chat_ui"):
        return "apps"
    for prefix in ("anomalygpt.models", "anomalygpt.evaluation", "data_sim", "training"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return "anomalygpt"


ALLOWED = {
    "data_sim": {"data_sim"},
    "anomalygpt.models": {"anomalygpt.models"},
    "anomalygpt": {"anomalygpt", "anomalygpt.models", "data_sim"},
    "anomalygpt.evaluation": {"anomalygpt.evaluation", "anomalygpt", "anomalygpt.models", "data_sim"},
    "training": {"training", "anomalygpt.evaluation", "anomalygpt", "anomalygpt.models", "data_sim"},
    "apps": {"apps", "training", "anomalygpt.evaluation", "anomalygpt", "anomalygpt.models", "data_sim"},
}
# the one module of the library layer that the pure pieces may use: dataclasses of settings
MODELS_MAY_USE = {"anomalygpt.config"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[str]:
    """Project modules imported anywhere in the file (also inside functions), resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import hub` imports a module; `from .x import name` a name of x
            found += [f"{target}.{a.name}" if not node.module else target for a in node.names]
    return [m for m in found if m.split(".")[0] in PACKAGES]


def test_every_import_runs_downward():
    bad = []
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    assert len(files) > 40
    for path in files:
        here = layer(module_name(path))
        for target in imports(path):
            there = layer(target)
            ok = there in ALLOWED[here]
            if here == "anomalygpt.models" and there == "anomalygpt":
                ok = target in MODELS_MAY_USE
            if not ok:
                bad.append(f"{module_name(path)} ({here}) imports {target} ({there})")
    assert not bad, "\n".join(bad)


def test_layer_rules_catch_an_upward_import(tmp_path):
    """The checker itself: an upward import in a file is found."""
    assert layer("data_sim.qa") == "data_sim" and layer("anomalygpt.models.lvlm") == "anomalygpt.models"
    assert layer("anomalygpt.cli") == "apps" and layer("anomalygpt.inspector") == "anomalygpt"
    assert "anomalygpt" not in ALLOWED["data_sim"] and "training" not in ALLOWED["anomalygpt"]
    assert imports(ROOT / "anomalygpt" / "models" / "detector.py")  # relative imports are resolved
    assert all(m.startswith("anomalygpt.models") or m in MODELS_MAY_USE
               for m in imports(ROOT / "anomalygpt" / "models" / "lvlm.py"))
