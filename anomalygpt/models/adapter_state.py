"""The trainable state of AnomalyLVLM: LoRA, image projector and prompt learner under
stable names (independent of peft's wrapper prefixes), loaded back either into peft's LoRA
layers (training) or folded into the frozen weights without peft (inference)."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..config import LLMConfig


class AdapterStateMixin:
    """Trainable-state methods of AnomalyLVLM (needs `llm`, `llm_cfg`, `image_proj`,
    `prompt_learner`, `lora_enabled`, `lora_folded`, `_lora_folded_in`)."""

    def _named_trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(stable name, parameter) for LoRA, image_proj and prompt_learner; nothing of the frozen LLM.

        LoRA names are the base model's module path with peft's adapter name removed
        ("lora.model.layers.0.self_attn.q_proj.lora_A.weight"), so they do not depend on peft's
        wrapper prefixes.
        """
        if self.lora_folded:
            raise RuntimeError("this LVLM was loaded for inference with LoRA folded into the LLM's weights, so it "
                               "has no trainable state; load the checkpoint with anomalygpt.checkpoint.load(path) to "
                               "train or save it")
        yield from self._named_adapters()
        if self.lora_enabled:
            adapter = f".{getattr(self.llm, 'active_adapter', 'default')}."
            for n, p in self.llm.get_base_model().named_parameters():
                if ".lora_" in n:
                    yield "lora." + n.replace(adapter, "."), p

    def _named_adapters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The image projector's and prompt learner's parameters (trainable parts besides LoRA)."""
        if self.image_proj is not None:
            for n, p in self.image_proj.named_parameters():
                yield f"image_proj.{n}", p
        for n, p in self.prompt_learner.named_parameters():
            yield f"prompt_learner.{n}", p

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Exactly the parameters that train (give these to the optimizer)."""
        return [p for _, p in self._named_trainable()]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Detached copies of the trainable tensors under stable names (never the frozen LLM)."""
        return {n: p.detach().clone() for n, p in self._named_trainable()}

    def load_trainable_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True) -> None:
        """Copy tensors saved by `trainable_state_dict` into this model (shapes must match).

        With LoRA folded (inference loads without peft) the LoRA pairs are not copied but
        added into their frozen weights, once (`_fold_lora`)."""
        if self._lora_folded_in:
            raise RuntimeError("LoRA is already folded into this LLM's weights; build a new model to load another state")
        own = dict(self._named_adapters() if self.lora_folded else self._named_trainable())
        folds = self._lora_fold_targets() if self.lora_folded else {}
        expected = set(own) | {f"lora.{n}.lora_{ab}.weight" for n in folds for ab in "AB"}
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise ValueError(f"trainable state does not fit this model: {len(missing)} missing (e.g. {missing[:2]}), "
                             f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); was it saved with other "
                             "llm/prompt settings (lora_r, lora_targets, n_*_tokens, LLM)?")
        with torch.no_grad():
            for name, p in own.items():
                if name not in state_dict:
                    continue
                t = state_dict[name]
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"trainable tensor '{name}' has shape {tuple(t.shape)} in the checkpoint but "
                                     f"{tuple(p.shape)} in the model; it was saved with other settings")
                p.copy_(t.to(p.device, p.dtype))
            if self.lora_folded:
                self._fold_lora(folds, state_dict)

    def _lora_fold_targets(self) -> dict[str, nn.Linear]:
        """The plain LLM's linear layers that LoRA adapts (by name, as peft matches them)."""
        return {name: m for name, m in self.llm.named_modules()
                if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in self.llm_cfg.lora_targets}

    def _fold_lora(self, targets: dict[str, nn.Linear], state_dict: dict[str, Tensor]) -> None:
        """Add each saved LoRA pair into its frozen weight as (alpha / r) * B @ A, peft's own merge."""
        r = self.llm_cfg.lora_r
        scale = self.llm_cfg.lora_alpha / r
        for name, m in targets.items():
            a, b = state_dict.get(f"lora.{name}.lora_A.weight"), state_dict.get(f"lora.{name}.lora_B.weight")
            if a is None or b is None:
                continue
            w = m.weight
            if tuple(b.shape) != (w.shape[0], r) or tuple(a.shape) != (r, w.shape[1]):
                raise ValueError(f"LoRA tensors of '{name}' ({tuple(a.shape)}, {tuple(b.shape)}) do not fit its "
                                 f"weight {tuple(w.shape)} with lora_r {r}")
            w.add_((b.float() @ a.float() * scale).to(w.dtype))
        self._lora_folded_in = True


def add_lora(llm: nn.Module, cfg: LLMConfig) -> nn.Module:
    """Wrap `llm` with peft LoRA; a target list that matches nothing is one clear error."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), task_type=TaskType.CAUSAL_LM, bias="none")
    try:
        return get_peft_model(llm, lora)
    except ValueError as e:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in llm.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"llm.lora_targets {list(cfg.lora_targets)} do not fit this LLM ({str(e).splitlines()[0][:120]}); "
                         f"its linear layers are named: {', '.join(linear)}") from None
