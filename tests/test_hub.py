"""The embedded weights: encoder mapping and the offline LLM with its cache."""
import numpy as np
import pytest
import torch
from PIL import Image

from anomalygpt import hub


@pytest.fixture(scope="module")
def classifier():
    return hub.load_timm_classifier()


def test_mapped_encoder_equals_reference_implementation(classifier):
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(hub.embedded_encoder_weights())).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ref(x) - classifier(x)).abs().max().item()
    assert diff < 1e-4


def test_encoder_recognises_sample_images(classifier):
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    names = [f.split("/")[-1] for f in data.filenames]
    top = {}
    for name, img in zip(names, data.images):
        x = torch.tensor(np.asarray(Image.fromarray(img).resize((224, 224)))).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            top[name] = classifier((x - 0.5) / 0.5).topk(3).indices[0].tolist()
    # ImageNet: 442 bell cote, 449 boathouse, 483 castle, 497 church, 538 dome, 663 monastery, 698 palace
    assert set(top["china.jpg"]) & {442, 483, 497, 538, 663, 698}
    assert 985 in top["flower.jpg"][:2]  # daisy


def test_missing_package_names_the_pip_command():
    with pytest.raises(hub.ModelNotAvailable, match="pip install some-missing-pkg"):
        hub.package_dir("some_missing_pkg_xyz", "pip install some-missing-pkg")


def test_embedded_llm_answers_and_cache_is_used(monkeypatch):
    model, tok = hub.load_llm("embedded")
    msgs = [{"role": "user", "content": "What colour is the sky on a clear day? Answer in one word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert text
    # second load must come from the safetensors cache, never from de-quantizing the GGUF again
    assert (hub.embedded_llm_dir() / "model.safetensors").is_file()

    def fail(*a, **k):
        raise AssertionError("cache was rebuilt instead of being used")

    monkeypatch.setattr(hub, "_build_embedded_cache", fail)
    model2, _ = hub.load_llm("embedded")
    assert model2.config.hidden_size == 576


def test_quantization_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(hub.ModelNotAvailable, match="needs a CUDA GPU"):
        hub.load_llm("random", quantization="4bit")
