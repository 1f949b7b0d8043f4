"""Prompt sets written by the LLM: parsing and de-duplication on fixed strings, file errors,
and the real path with the embedded SmolLM2 (generated, parsed, de-duplicated, cached,
reused without regenerating, edits honoured, used as the CLIP anchors)."""
from __future__ import annotations

import json

import pytest
import torch

from anomalygpt.zeroshot import prompt_sets as ps

# kept small so the embedded LLM writes a set in seconds; the defaults write more phrases
FAST = {"per_start": 4, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def embedded_llm(one_thread):
    """The embedded SmolLM2 (offline), loaded once for the session's only user, this module."""
    from anomalygpt import hub

    return hub.load_llm("embedded")


def test_clean_phrase_and_items():
    assert ps.clean_phrase(' "A bottle with a crack in the"  ') == "a bottle with a crack"
    assert ps.clean_phrase("2) a dented bottle, seen from above") == "a dented bottle"
    assert ps.clean_phrase("an intact bottle without any") == "an intact bottle"
    assert ps.clean_phrase("a defective bottle that has been") == "a defective bottle"
    assert ps.split_items("a bottle with a leak; a broken bottle; a\nCapsule: junk") == [
        "a bottle with a leak", " a broken bottle", " a"]


def test_filter_keeps_valid_unique_phrases_of_the_object():
    raw = ["a bottle with a crack; a bottle with a crack; A bottle with a Crack.",
           "a capsule with a hole",            # not the object
           "a bottle with 3 holes",            # digits
           "a",                                # too short
           "a bottle; the bottle",             # no state
           "a perfect bottle; a bottle with a scratch; a bottle with no scratch"]
    assert ps.filter_phrases(raw, "bottle", normal=False) == [
        "a bottle with a crack", "a perfect bottle", "a bottle with a scratch", "a bottle with no scratch"]
    # a normal phrase may not name an un-negated defect
    assert ps.filter_phrases(raw, "bottle", normal=True) == ["a perfect bottle", "a bottle with no scratch"]


def test_deduplicate_drops_repeats_and_phrases_on_both_sides():
    normal, abnormal = ps.deduplicate(["a clean bottle", "a Clean bottle.", "a plain bottle"],
                                      ["a plain bottle", "a cracked bottle", "a cracked bottle"])
    assert normal == ["a clean bottle"] and abnormal == ["a cracked bottle"]


def test_prompt_file_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; fix"):
        ps.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ps.load(bad)
    bad.write_text(json.dumps({"normal": ["a good bottle"], "abnormal": []}))
    with pytest.raises(ValueError, match="abnormal must be a non-empty list"):
        ps.load(bad)
    bad.write_text(json.dumps({"normal": ["a"], "abnormal": ["b"], "templates": ["no slot"]}))
    with pytest.raises(ValueError, match="templates"):
        ps.load(bad)
    with pytest.raises(ValueError, match="no letters or digits"):
        ps.slug("  ?! ")


def test_user_file_is_used_and_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALYGPT_CACHE", str(tmp_path / "cache"))
    own = tmp_path / "mine.json"
    ps.save(ps.PromptSet("gear", ["a gear with all teeth"], ["a gear with a missing tooth"]), own)
    before = own.read_text()

    def no_llm(name):
        raise AssertionError("a user's prompt file must not call the LLM")

    prompts, path, created = ps.load_or_generate("gear", own, llm_loader=no_llm)
    assert path == own and not created and prompts.abnormal == ["a gear with a missing tooth"]
    assert own.read_text() == before and not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def generated(embedded_llm, tmp_path_factory):
    """One prompt set written by the embedded LLM into a fresh cache; the loader counts calls."""
    root = tmp_path_factory.mktemp("cache")
    calls: list[str] = []

    def loader(name):
        calls.append(name)
        return embedded_llm

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANOMALYGPT_CACHE", str(root))
        prompts, path, created = ps.load_or_generate("Bottle", llm_loader=loader, **FAST)
    return {"prompts": prompts, "path": path, "created": created, "calls": calls, "loader": loader, "root": root}


def test_embedded_llm_writes_a_parsed_deduplicated_cached_set(generated):
    prompts, path = generated["prompts"], generated["path"]
    assert generated["created"] and generated["calls"] == ["embedded"]
    assert path == generated["root"] / "prompts" / "bottle.json"
    assert prompts.generated_by == "llm:embedded" and prompts.object_name == "bottle"
    # parsed: clean phrases that name the object; de-duplicated within and across the lists
    for side in (prompts.normal, prompts.abnormal):
        assert len(side) >= 2 and all("bottle" in p and p == ps.clean_phrase(p) for p in side)
        assert len({ps._key(p) for p in side}) == len(side)
    assert not {ps._key(p) for p in prompts.normal} & {ps._key(p) for p in prompts.abnormal}
    assert not any(ps._names_defect(p) for p in prompts.normal)
    assert ps.load(path).to_json() == prompts.to_json()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # atomic write left no temp


def test_cached_set_is_reused_not_regenerated_and_edits_survive(generated, monkeypatch):
    monkeypatch.setenv("ANOMALYGPT_CACHE", str(generated["root"]))
    path = generated["path"]
    data = json.loads(path.read_text())
    data["abnormal"].append("a bottle with a chipped neck")
    path.write_text(json.dumps(data))
    again, path2, created = ps.load_or_generate("bottle", llm_loader=generated["loader"])
    assert not created and path2 == path and generated["calls"] == ["embedded"]  # the LLM was not called again
    assert again.abnormal[-1] == "a bottle with a chipped neck" and again.normal == generated["prompts"].normal


def test_generated_set_becomes_the_clip_anchors(generated):
    """The LLM's phrases are what the CLIP text tower embeds: anchors equal the mean of the
    template x phrase sentences (tiny random CLIP stands in for real weights)."""
    import torch.nn.functional as F

    from anomalygpt import hub
    from anomalygpt.zeroshot.clip_language import text_anchors
    from test_zeroshot_language import TINY_ZS_CLIP

    prompts = generated["prompts"]
    normal, abnormal = prompts.sentences()
    assert len(normal) == len(prompts.normal) * len(ps.TEMPLATES)
    assert f"a photo of {prompts.abnormal[0]}." in abnormal
    torch.manual_seed(0)
    clip, ctok = hub.load_open_clip("zs-tiny-vit", "none", {"model_cfg": TINY_ZS_CLIP})
    anchors = text_anchors(clip, ctok, prompts)
    for row, sentences in zip(anchors, (normal, abnormal)):
        with torch.no_grad():
            manual = F.normalize(F.normalize(clip.encode_text(ctok(sentences)), dim=-1).mean(0), dim=-1)
        assert torch.allclose(row, manual, atol=1e-5)
