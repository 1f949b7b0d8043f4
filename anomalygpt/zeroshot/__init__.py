"""Training-free inspection modes: no references and nothing trained on the product.

    assistant.inspect("part.png", zero_shot="self")
    list(assistant.inspect_many(folder_images, zero_shot="batch"))

`modes.MODES` maps a mode name to its scorer; the maths lives in small modules without I/O
(self_similarity, batch_mutual, features, thresholds).
"""
from .modes import MODES, ZeroShotContext, ZeroShotMode, ZeroShotResult, get_mode, register

__all__ = ["MODES", "ZeroShotContext", "ZeroShotMode", "ZeroShotResult", "get_mode", "register"]
