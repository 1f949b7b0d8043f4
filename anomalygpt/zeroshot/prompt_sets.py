"""Prompt sets for language-guided zero-shot: normal and abnormal state phrases of a named
object, written once by the configured LLM, cached as an editable JSON file, reused.

Why an LLM: WinCLIP's fixed state words ("damaged {}") are generic; FADE asks an LLM what
defects *this* object has ("a bottle with a chipped neck"). The embedded SmolLM2-135M is
too small to follow a free instruction ("list 8 defects" yields essays), so it is steered
as a completion model: a few-shot list of two other objects, then the phrase opening for
the named object ("a bottle with a") which it finishes. Sampled continuations are cut at
the first separator, cleaned, filtered (must name the object; a normal phrase must not name
a defect unless negated) and de-duplicated. The file is the user's to edit: it is read, not
regenerated, whenever it exists.

File format (JSON): {"object": str, "normal": [phrase], "abnormal": [phrase],
"templates": ["a photo of {}.", ...], "generated_by": str}. Sentences = template x phrase.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from data_sim.imageio import write_text

# WinCLIP-style templates; the phrase carries its article ("a bottle with a crack")
TEMPLATES: tuple[str, ...] = (
    "a photo of {}.", "a close-up photo of {}.", "a cropped photo of {}.", "a bright photo of {}.",
    "a dark photo of {}.", "a photo of {} for visual inspection.", "an industrial photo of {}.",
)

FEW_SHOT = """Short descriptions of a part on an inspection line, in a good state and in a defective state.

Object: metal nut
Good: a flawless metal nut; a clean metal nut with sharp threads; an intact metal nut; a metal nut with an even surface
Defective: a metal nut with a scratch; a bent metal nut; a metal nut with a crack; a metal nut with a missing thread; a rusty metal nut

Object: capsule
Good: a perfect capsule; an intact capsule with clear print; a smooth capsule without marks
Defective: a cracked capsule; a squeezed capsule; a capsule with a faulty print; a capsule with a hole

Object: {obj}
{kind}: {start}"""

# phrase openings the model completes; "{obj}" is the object name
NORMAL_STARTS: tuple[str, ...] = ("a", "a {obj} with no")
ABNORMAL_STARTS: tuple[str, ...] = ("a", "a {obj} with a")

# a normal phrase naming one of these (without "no"/"without"/"free") describes a defect
DEFECT_WORDS = frozenset(
    "defect defects defective damaged damage broken crack cracks cracked hole holes leak leaks scratch "
    "scratches scratched faulty dent dented bent tear torn missing corroded corrosion rust rusty chip "
    "chipped malfunctioning bad wrong stain stained dirty contaminated burn burnt puncture punctured".split())
NEGATIONS = frozenset({"no", "without", "free", "not", "never"})
DANGLING = frozenset({"a", "an", "the", "of", "or", "and", "in", "on", "with", "to", "due", "but", "that",
                      "which", "at", "by", "for", "from", "is", "its", "it's", "their", "one", "any", "some",
                      "without", "no", "very", "more", "has", "have", "are", "been", "being", "was", "were"})


@dataclass
class PromptSet:
    object_name: str
    normal: list[str]
    abnormal: list[str]
    templates: list[str] = field(default_factory=lambda: list(TEMPLATES))
    generated_by: str = "user"

    def sentences(self) -> tuple[list[str], list[str]]:
        """(normal sentences, abnormal sentences): every template around every phrase."""
        def fill(phrases: list[str]) -> list[str]:
            return [t.format(p) for p in phrases for t in self.templates]
        return fill(self.normal), fill(self.abnormal)

    def to_json(self) -> dict[str, Any]:
        return {"object": self.object_name, "normal": self.normal, "abnormal": self.abnormal,
                "templates": self.templates, "generated_by": self.generated_by}


# ----------------------------------------------------------------------------- parsing
def clean_phrase(text: str) -> str:
    """First item of a raw continuation, tidied: cut at ; . newline , or '(' ; lower case,
    collapsed spaces, quotes and list markers removed, dangling function words dropped."""
    text = re.split(r"[;.\n,(\[:!?]", text, maxsplit=1)[0]
    text = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)-])\s*", "", text)
    text = re.sub(r"[\"'`]+(?=\s|$)|(?<=\s)[\"'`]+|^[\"'`]+", "", text)
    words = text.lower().split()
    while words and words[-1] in DANGLING:
        words.pop()
    return " ".join(words)


def split_items(text: str) -> list[str]:
    """The list items of one completion: its first line, split at ';' (the few-shot format).
    The model often continues the list, so one sample can give several phrases."""
    return [t for t in text.split("\n", 1)[0].split(";") if t.strip()]


def _key(phrase: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", phrase.lower()).strip()


def _names_defect(phrase: str) -> bool:
    words = re.findall(r"[a-z']+", phrase.lower())
    return any(w in DEFECT_WORDS for w in words) and not any(w in NEGATIONS for w in words)


def filter_phrases(raw: list[str], object_name: str, normal: bool,
                   min_words: int = 2, max_words: int = 12) -> list[str]:
    """Cleaned, valid, de-duplicated phrases (every list item of every completion) in
    first-seen order. Valid: names the object and more than the object (a state),
    2-12 words, letters only, and (for normal phrases) names no un-negated defect."""
    out, seen = [], set()
    obj = object_name.lower()
    for r in (item for text in raw for item in split_items(text)):
        p = clean_phrase(r)
        k = _key(p)
        n = len(p.split())
        bare = re.sub(r"^(a|an|the) ", "", p) == obj  # "a bottle" names no state
        if (not k or k in seen or obj not in p or bare or not min_words <= n <= max_words
                or re.search(r"[^a-z \-']", p) or (normal and _names_defect(p))):
            continue
        seen.add(k)
        out.append(p)
    return out


def deduplicate(normal: list[str], abnormal: list[str]) -> tuple[list[str], list[str]]:
    """Drop repeats within each list and phrases that appear in both (they cannot anchor
    either side)."""
    def uniq(items: list[str]) -> list[str]:
        seen, out = set(), []
        for p in items:
            if _key(p) and _key(p) not in seen:
                seen.add(_key(p))
                out.append(p)
        return out
    normal, abnormal = uniq(normal), uniq(abnormal)
    both = {_key(p) for p in normal} & {_key(p) for p in abnormal}
    return [p for p in normal if _key(p) not in both], [p for p in abnormal if _key(p) not in both]


# ----------------------------------------------------------------------------- generation
def generate_raw(llm: Any, tokenizer: Any, object_name: str, kind: str, starts: tuple[str, ...],
                 per_start: int = 8, max_new_tokens: int = 10, seed: int = 0) -> list[str]:
    """Sampled completions (start + continuation) of the few-shot list for one kind
    ('Good' or 'Defective'). Seeded, so a name always yields the same set."""
    import inspect

    import torch

    # transformers 5 renamed generate's cache keyword; both are accepted, the old one warns
    cache_kw = "cache" if "cache" in inspect.signature(type(llm).forward).parameters else "past_key_values"
    out: list[str] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in starts:
            start = start.format(obj=object_name)
            ids = tokenizer(FEW_SHOT.format(obj=object_name, kind=kind, start=start), return_tensors="pt")["input_ids"]
            # the long few-shot prompt is run once and its KV cache copied per sample:
            # prefill dominates the cost of these short completions on a CPU
            prefill = llm(ids[:, :-1], use_cache=True)
            cache = prefill["cache"] if "cache" in prefill else prefill["past_key_values"]
            cache.batch_repeat_interleave(per_start)
            batch = ids.expand(per_start, -1)
            seqs = llm.generate(input_ids=batch, attention_mask=torch.ones_like(batch), max_new_tokens=max_new_tokens, do_sample=True, temperature=0.9, top_p=0.95,
                                pad_token_id=pad, **{cache_kw: cache})
            out += [start + tokenizer.decode(s[ids.shape[1]:], skip_special_tokens=True) for s in seqs]
    return out


def generate_prompt_set(llm: Any, tokenizer: Any, object_name: str, llm_name: str = "embedded",
                        per_start: int = 8, max_new_tokens: int = 10, seed: int = 0) -> PromptSet:
    """Ask the LLM for normal and abnormal phrases of `object_name`; parse and de-duplicate.
    Raises ValueError when either side ends up empty (nothing usable to anchor on)."""
    name = object_name.strip().lower()
    normal = filter_phrases(generate_raw(llm, tokenizer, name, "Good", NORMAL_STARTS, per_start,
                                         max_new_tokens, seed), name, normal=True)
    abnormal = filter_phrases(generate_raw(llm, tokenizer, name, "Defective", ABNORMAL_STARTS, per_start,
                                           max_new_tokens, seed + 1), name, normal=False)
    normal, abnormal = deduplicate(normal, abnormal)
    if not normal or not abnormal:
        raise ValueError(f"the LLM '{llm_name}' wrote no usable {'normal' if not normal else 'abnormal'} "
                         f"phrases for '{name}'; fix: write them in a prompt file (--prompts FILE)")
    return PromptSet(name, normal, abnormal, list(TEMPLATES), generated_by=f"llm:{llm_name}")


# ----------------------------------------------------------------------------- files
def slug(object_name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", object_name.strip().lower()).strip("-")
    if not s:
        raise ValueError(f"object name {object_name!r} has no letters or digits; fix: pass a name such as 'bottle'")
    return s


def default_path(object_name: str) -> Path:
    """cache_dir()/prompts/<object>.json (ANOMALYGPT_CACHE moves the cache)."""
    from ..hub import cache_dir

    return cache_dir() / "prompts" / f"{slug(object_name)}.json"


def save(prompts: PromptSet, path: Path) -> None:
    """Atomic write (temp file in the same folder + rename): a crash never leaves half a file."""
    write_text(path, json.dumps(prompts.to_json(), indent=2) + "\n")


def load(path: Path) -> PromptSet:
    """Read a prompt file; one clear error naming the file and what is wrong with it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist; fix: pass an existing JSON file "
                                "or omit it to have the LLM write one")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"prompt file {path} is not valid JSON (line {e.lineno}: {e.msg}); fix: correct or delete it") from None
    bad = [k for k in ("normal", "abnormal") if not isinstance(data.get(k), list) or not data[k]
           or not all(isinstance(s, str) and s.strip() for s in data[k])]
    templates = data.get("templates", list(TEMPLATES))
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        bad.append("templates (each needs one '{}')")
    if bad:
        raise ValueError(f"prompt file {path}: {', '.join(bad)} must be a non-empty list of strings; fix: edit the file")
    return PromptSet(str(data.get("object", path.stem)), [s.strip() for s in data["normal"]],
                     [s.strip() for s in data["abnormal"]], templates, str(data.get("generated_by", "user")))


def load_or_generate(object_name: str, path: str | Path | None = None, llm_name: str = "embedded",
                     llm_loader: Callable[[str], tuple[Any, Any]] | None = None,
                     **gen_kwargs: Any) -> tuple[PromptSet, Path, bool]:
    """(prompt set, its file, whether it was generated now).

    A user's `path` is read and never written. Otherwise the cached file for the object is
    read if present (edits survive), else the LLM writes it once. `llm_loader(name)` returns
    (model, tokenizer); default anomalygpt.hub.load_llm, called only when generating.
    """
    if path is not None:
        return load(Path(path)), Path(path), False
    target = default_path(object_name)
    if target.is_file():
        return load(target), target, False
    if llm_loader is None:
        from ..hub import load_llm as llm_loader
    llm, tok = llm_loader(llm_name)
    prompts = generate_prompt_set(llm, tok, object_name, llm_name=llm_name, **gen_kwargs)
    save(prompts, target)
    return prompts, target, True
