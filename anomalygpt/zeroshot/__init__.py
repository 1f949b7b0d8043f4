"""Training-free inspection modes (issue 18): no references, nothing trained on the product.

Language-guided (CLIP + LLM-written prompt sets + GEM + object crop): clip_language.py,
clip_vit.py, gem.py, prompt_sets.py, crop.py. Heavy libraries (open_clip, transformers) are
imported only when a model is built, so importing this package stays cheap.
"""
