"""AnomalyLVLM: a frozen causal LLM (+ LoRA) that answers questions about an inspected image.

The image reaches the LLM as embeddings spliced into an ordinary chat prompt, built with the
tokenizer's OWN chat template so any instruction-tuned model keeps the turn format it was
trained on:

    [system] [user: facts \\n <img> IMAGE-EMBEDDINGS </img> \\n question] [assistant: answer] ...

IMAGE-EMBEDDINGS = n_image_tokens projections of the encoder's global embedding followed by
the PromptLearner's tokens for the anomaly map. `<img>`/`</img>` are plain text (no new
vocabulary), so the frozen embedding matrix and the tokenizer stay untouched and the saved
trainable state is only LoRA + projector + prompt learner.

The measured facts (score, verdict, regions) are given as text: the numbers come from the
detector, and the LLM's job is to phrase them and to follow up consistently, not to guess them
from soft tokens. The soft tokens add what words cannot cheaply carry (shape of the map).

Only the answer tokens (and the template's end-of-turn token, so the model learns to stop) are
supervised; prompt, image tokens, earlier turns and padding get label -100.
"""
from __future__ import annotations

import inspect
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LLMConfig, PromptConfig
from .decode_weights import DecodeLinear, compact_decode_weights, half_kernel_is_safe
from .prompt_learner import PromptLearner

# Short on purpose: every training sequence pays for these tokens, forward and backward.
SYSTEM_PROMPT = "You are an industrial inspection assistant. Answer briefly, only from the measured facts."
IMAGE_OPEN = "<img>"
IMAGE_CLOSE = "</img>"
IGNORE_INDEX = -100
# Placeholder rendered through the chat template and then cut out; the embeddings go where it
# was. A sentinel (not "<img></img>" itself) so user text that happens to contain "<img>" can
# never move the split point.
_SPLIT = "<<ANOMALYGPT-IMAGE-EMBEDDINGS>>"
# Used only when a tokenizer has no chat template (a base model): role-prefixed turns ending
# in the tokenizer's eos token, so the model still learns where an answer stops.
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")


@dataclass
class LVLMInputs:
    """What the LLM consumes for one batch (all on the LLM's device)."""
    inputs_embeds: Tensor          # [B, L, hidden], LLM dtype
    attention_mask: Tensor         # [B, L], 1 = real token, 0 = padding
    labels: Tensor | None          # [B, L], token id on supervised positions, -100 elsewhere


class AnomalyLVLM(nn.Module):
    """Frozen causal LM + LoRA + image projector + PromptLearner, trained on answers only."""

    def __init__(self, llm: nn.Module, tokenizer: Any, image_dim: int, prompt_cfg: PromptConfig,
                 llm_cfg: LLMConfig, fold_lora: bool = False) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.prompt_cfg = prompt_cfg
        self.llm_cfg = llm_cfg
        emb = llm.get_input_embeddings()
        self.hidden_size: int = emb.embedding_dim
        self.n_image_tokens = prompt_cfg.n_image_tokens
        device = emb.weight.device

        llm.requires_grad_(False)
        quantized = getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False)
        if llm_cfg.quantization != "none" and not quantized:
            raise ValueError(f"llm.quantization is {llm_cfg.quantization} but the given LLM is not loaded in k-bit; "
                             "load it through hub.load_llm (CUDA + bitsandbytes) or set llm.quantization: none")
        if quantized:
            # casts norms to fp32 and makes checkpointed inputs carry grads: LoRA on k-bit
            # weights does not train stably without it
            from peft import prepare_model_for_kbit_training
            llm = prepare_model_for_kbit_training(llm)
        # fold_lora (inference only): no peft wrapper; the LoRA tensors of a checkpoint are
        # added into the frozen weights when loaded. Importing peft alone took 1.8 s of the
        # assistant's ~7 s warm load on 2 CPU cores, and inference merges LoRA anyway.
        self.lora_folded = llm_cfg.lora_r > 0 and fold_lora
        self.lora_enabled = llm_cfg.lora_r > 0 and not fold_lora
        self._lora_folded_in = False  # set once the checkpoint's LoRA is added into the weights
        if self.lora_enabled:
            llm = _add_lora(llm, llm_cfg)
        self.llm = llm

        # trainable parts stay float32 even under a bf16/fp16 LLM: tiny, and stable under AdamW
        self.image_proj: nn.Linear | None = None
        if self.n_image_tokens > 0:
            self.image_proj = nn.Linear(image_dim, self.n_image_tokens * self.hidden_size)
            # small outputs at init, like the PromptLearner, so an untrained model stays fluent
            nn.init.normal_(self.image_proj.weight, std=0.02 / image_dim ** 0.5)
            nn.init.zeros_(self.image_proj.bias)
        self.prompt_learner = PromptLearner(self.hidden_size, n_map_tokens=prompt_cfg.n_map_tokens,
                                            n_base_tokens=prompt_cfg.n_base_tokens, in_channels=1)
        self.image_dim = image_dim
        if self.image_proj is not None:
            self.image_proj.to(device)
        self.prompt_learner.to(device)

        self._template: str | None = None if getattr(tokenizer, "chat_template", None) else _FALLBACK_TEMPLATE
        self._system_in_user = not self._template_accepts_system()
        self.eos_token_ids = self._stop_token_ids()
        base = self.llm.get_base_model() if self.lora_enabled else self.llm
        self._supports_logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else self.eos_token_ids[0]

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, llm_cfg: LLMConfig, prompt_cfg: PromptConfig, image_dim: int,
              fold_lora: bool = False) -> "AnomalyLVLM":
        """Load the LLM named in `llm_cfg` through the hub (embedded / random / HF id) and wrap it."""
        from .hub import load_llm

        llm, tok = load_llm(llm_cfg.name, dtype=llm_cfg.dtype, quantization=llm_cfg.quantization,
                            random_config=llm_cfg.random_config or None)
        return cls(llm, tok, image_dim, prompt_cfg, llm_cfg, fold_lora=fold_lora)

    @property
    def n_visual_tokens(self) -> int:
        """Embeddings spliced between <img> and </img> per image."""
        return self.n_image_tokens + self.prompt_learner.n_tokens

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # ------------------------------------------------------------------ prompt text
    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  chat_template=self._template)

    def _template_accepts_system(self) -> bool:
        """Some templates (Gemma, early Mistral) raise on a system turn; those get it in the user turn."""
        try:
            self._render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], True)
            return True
        except Exception:  # noqa: BLE001 - jinja raises its own exception types from the template
            return False

    def _stop_token_ids(self) -> list[int]:
        """eos ids for generation: the tokenizer's eos plus the template's end-of-turn token.

        Chat models often end a turn with a token other than eos (e.g. <|eot_id|>); it is read
        off the template by rendering a dummy answer, so no model-specific table is needed.
        """
        ids: list[int] = []
        eos = self.tokenizer.eos_token_id
        if eos is not None:
            ids.append(int(eos))
        try:
            _, _, tail = self._answer_text([{"role": "user", "content": "Hi"}], "OK")
            tail_ids = self.tokenizer(tail, add_special_tokens=False).input_ids
            if len(tail_ids) == 1:
                ids.append(int(tail_ids[0]))
        except ValueError:
            pass
        gen_eos = getattr(getattr(self.llm, "generation_config", None), "eos_token_id", None)
        if not ids and gen_eos is not None:
            ids += [gen_eos] if isinstance(gen_eos, int) else list(gen_eos)
        if not ids:
            raise ValueError("the tokenizer has no eos token and its chat template no end-of-turn token; "
                             "set tokenizer.eos_token before building AnomalyLVLM")
        return list(dict.fromkeys(ids))

    def build_messages(self, question: str, facts: str | None = None,
                       history: Sequence[tuple[str, str]] | None = None) -> list[dict[str, str]]:
        """Chat messages for one sample; the image block goes in the FIRST user turn.

        With a history [(q0, a0), (q1, a1)], the turns are: user(facts, image, q0), assistant a0,
        user q1, assistant a1, user `question`. The image is shown once, as in a real chat.
        """
        history = list(history or [])
        image_block = f"{IMAGE_OPEN}{_SPLIT}{IMAGE_CLOSE}"
        first_q = history[0][0] if history else question
        first = "\n".join(p for p in ((facts or "").strip(), image_block, first_q.strip()) if p)
        msgs: list[dict[str, str]] = []
        if self._system_in_user:
            first = f"{SYSTEM_PROMPT}\n\n{first}"
        else:
            msgs.append({"role": "system", "content": SYSTEM_PROMPT})
        msgs.append({"role": "user", "content": first})
        for i, (_, a) in enumerate(history):
            msgs.append({"role": "assistant", "content": a.strip()})
            msgs.append({"role": "user", "content": history[i + 1][0].strip() if i + 1 < len(history) else question.strip()})
        return msgs

    def render_prompt(self, question: str, facts: str | None = None,
                      history: Sequence[tuple[str, str]] | None = None) -> str:
        """The prompt text as the LLM sees it, with `<img></img>` where the embeddings go (for logs/UI)."""
        return self._render(self.build_messages(question, facts, history), True).replace(_SPLIT, "")

    def _answer_text(self, messages: list[dict[str, str]], answer: str) -> tuple[str, str, str]:
        """(prompt text, supervised completion, unsupervised tail) for an assistant answer.

        The completion is whatever the template appends after the generation prompt when the
        answer is added (answer + end-of-turn marker); trailing whitespace (ChatML's newline)
        is not supervised, since generation stops at the end-of-turn token before it.
        """
        prompt = self._render(messages, True)
        full = self._render(messages + [{"role": "assistant", "content": answer}], False)
        if not full.startswith(prompt):
            raise ValueError("this chat template renders the assistant turn in a way that does not extend the "
                             "generation prompt; AnomalyLVLM cannot find the answer tokens for it")
        completion = full[len(prompt):]
        sup = completion.rstrip()
        idx = sup.rfind(answer)
        tail = sup[idx + len(answer):] if idx >= 0 else ""
        return prompt, sup, tail

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    # ------------------------------------------------------------------ embeddings
    def visual_tokens(self, global_emb: Tensor, anomaly_map: Tensor) -> Tensor:
        """[B, D] global embedding + [B, 1, H, W] map -> [B, n_visual_tokens, hidden] in the LLM dtype."""
        if global_emb.dim() != 2 or global_emb.shape[1] != self.image_dim:
            raise ValueError(f"global_emb must be [B, {self.image_dim}], got {tuple(global_emb.shape)}")
        if anomaly_map.dim() != 4 or anomaly_map.shape[1] != 1 or anomaly_map.shape[0] != global_emb.shape[0]:
            raise ValueError(f"anomaly_map must be [B, 1, H, W] with B = {global_emb.shape[0]}, got {tuple(anomaly_map.shape)}")
        dev = self.prompt_learner.proj.weight.device
        parts = []
        if self.image_proj is not None:
            g = global_emb.to(dev, self.image_proj.weight.dtype)
            parts.append(self.image_proj(g).view(g.shape[0], self.n_image_tokens, self.hidden_size))
        parts.append(self.prompt_learner(anomaly_map.to(dev, torch.float32)))
        return torch.cat(parts, dim=1).to(self.device, self.llm_dtype)

    def prepare_inputs(self, global_emb: Tensor, anomaly_map: Tensor, questions: Sequence[str],
                       answers: Sequence[str] | None = None, facts: Sequence[str | None] | None = None,
                       histories: Sequence[Sequence[tuple[str, str]]] | None = None,
                       padding_side: str = "right") -> LVLMInputs:
        """Embeddings, mask and labels for a batch: text embeddings around the spliced image block.

        Right padding for training (positions stay 0..n for real tokens), left padding for
        generation (every sample's next token is at the last position).
        """
        b = len(questions)
        facts = list(facts) if facts is not None else [None] * b
        histories = list(histories) if histories is not None else [[] for _ in range(b)]
        if answers is not None and len(answers) != b:
            raise ValueError(f"got {b} questions but {len(answers)} answers")
        if len(facts) != b or len(histories) != b or global_emb.shape[0] != b:
            raise ValueError(f"batch sizes differ: {b} questions, {len(facts)} facts, {len(histories)} histories, "
                             f"{global_emb.shape[0]} images")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        visual = self.visual_tokens(global_emb, anomaly_map)
        embed = self.llm.get_input_embeddings()
        dev = self.device
        seqs: list[Tensor] = []
        labels: list[list[int]] = []
        for i in range(b):
            msgs = self.build_messages(questions[i], facts[i], histories[i])
            if answers is not None:
                prompt, sup, _ = self._answer_text(msgs, answers[i].strip())
                ans_ids = self._tokenize(sup)
            else:
                prompt, ans_ids = self._render(msgs, True), []
            if prompt.count(_SPLIT) != 1:
                raise ValueError(f"the text must not contain {_SPLIT!r}")
            pre, post = prompt.split(_SPLIT)
            pre_ids, post_ids = self._tokenize(pre), self._tokenize(post)
            text_ids = torch.tensor(pre_ids + post_ids + ans_ids, dtype=torch.long, device=dev)
            text_emb = embed(text_ids)
            n_pre, n_post = len(pre_ids), len(post_ids)
            seqs.append(torch.cat([text_emb[:n_pre], visual[i], text_emb[n_pre:]], dim=0))
            labels.append([IGNORE_INDEX] * (n_pre + visual.shape[1] + n_post) + ans_ids)
        length = max(s.shape[0] for s in seqs)
        embeds = visual.new_zeros(b, length, self.hidden_size)
        mask = torch.zeros(b, length, dtype=torch.long, device=dev)
        lab = torch.full((b, length), IGNORE_INDEX, dtype=torch.long, device=dev)
        for i, s in enumerate(seqs):
            n = s.shape[0]
            sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
            embeds[i, sl] = s
            mask[i, sl] = 1
            lab[i, sl] = torch.tensor(labels[i], dtype=torch.long, device=dev)
        return LVLMInputs(embeds, mask, lab if answers is not None else None)

    # ------------------------------------------------------------------ training
    def forward(self, global_emb: Tensor, anomaly_map: Tensor, questions: list[str], answers: list[str],
                facts: list[str | None] | None = None,
                histories: list[list[tuple[str, str]]] | None = None) -> Tensor:
        """Mean cross-entropy over the answer tokens (incl. end-of-turn) of the batch; a scalar."""
        batch = self.prepare_inputs(global_emb, anomaly_map, questions, answers, facts, histories, "right")
        targets = batch.labels[:, 1:]          # the output at position t predicts token t + 1
        keep = targets != IGNORE_INDEX
        if not keep.any():
            raise ValueError("no answer tokens to supervise (empty answers?)")
        # Positions whose output is supervised in at least one sample. The vocabulary
        # projection is by far the largest matmul for small LLMs (49k x 576 for SmolLM2), so it
        # runs only there when the model supports `logits_to_keep` with an index tensor.
        pos = keep.any(dim=0).nonzero().squeeze(1)
        if self._supports_logits_to_keep:
            logits = self.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                              use_cache=False, logits_to_keep=pos).logits
        else:
            logits = self.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                              use_cache=False).logits[:, pos]
        sel = keep[:, pos]
        return F.cross_entropy(logits[sel].float(), targets[:, pos][sel])

    # ------------------------------------------------------------------ generation
    def _generation_config(self, max_new_tokens: int | None, do_sample: bool, temperature: float, top_p: float,
                           min_new_tokens: int = 0):
        from transformers import GenerationConfig

        extra = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        return GenerationConfig(max_new_tokens=max_new_tokens or self.llm_cfg.max_new_tokens, do_sample=do_sample,
                                eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id,
                                min_new_tokens=min_new_tokens or None, use_cache=True, **extra)

    @torch.no_grad()
    def generate(self, global_emb: Tensor, anomaly_map: Tensor, questions: list[str],
                 facts: list[str | None] | None = None, histories: list[list[tuple[str, str]]] | None = None,
                 max_new_tokens: int | None = None, do_sample: bool = False, temperature: float = 0.7,
                 top_p: float = 0.9) -> list[str]:
        """Answers for a batch (greedy unless do_sample); the new text only, stripped.

        Runs in eval mode (LoRA dropout off, so greedy is deterministic) and restores the
        previous mode afterwards.
        """
        batch = self.prepare_inputs(global_emb, anomaly_map, questions, None, facts, histories, "left")
        was_training = self.training
        self.eval()
        try:
            out = self.llm.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                    generation_config=self._generation_config(max_new_tokens, do_sample, temperature, top_p))
        finally:
            self.train(was_training)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def stream_generate(self, global_emb: Tensor, anomaly_map: Tensor, question: str, facts: str | None = None,
                        history: list[tuple[str, str]] | None = None, max_new_tokens: int | None = None,
                        do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9,
                        min_new_tokens: int = 0) -> Iterator[str]:
        """One answer (batch of 1), yielded as text pieces while it is generated (for the chat UI).

        `min_new_tokens` holds the end-of-answer token back that long (the benchmark's
        worst-case answer length)."""
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        if global_emb.shape[0] != 1:
            raise ValueError(f"stream_generate takes one image (batch 1), got {global_emb.shape[0]}")
        with torch.no_grad():
            batch = self.prepare_inputs(global_emb, anomaly_map, [question], None, [facts], [history or []], "left")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []
        stop = threading.Event()  # set when the consumer stops early (chat UI "stop"), ends generation

        def run() -> None:
            try:
                with torch.no_grad():
                    self.llm.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                      streamer=streamer, stopping_criteria=StoppingCriteriaList([_EventStop(stop)]),
                                      generation_config=self._generation_config(max_new_tokens, do_sample, temperature,
                                                                                top_p, min_new_tokens))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                streamer.end()

        was_training = self.training
        self.eval()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            started = False
            for piece in streamer:
                if not started:
                    piece = piece.lstrip()
                    started = bool(piece)
                if piece:
                    yield piece
        finally:
            stop.set()
            thread.join()
            self.train(was_training)
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ trainable state
    def _named_trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(stable name, parameter) for LoRA, image_proj and prompt_learner; nothing of the frozen LLM.

        LoRA names are the base model's module path with peft's adapter name removed
        ("lora.model.layers.0.self_attn.q_proj.lora_A.weight"), so they do not depend on peft's
        wrapper prefixes.
        """
        if self.lora_folded:
            raise RuntimeError("this LVLM was loaded for inference with LoRA folded into the LLM's weights, so it "
                               "has no trainable state; load the checkpoint with anomalygpt.model.load(path) to "
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

    def merge_lora(self) -> None:
        """Fold the LoRA deltas into the frozen weights, for inference only: one matmul per
        projection instead of three; on 2 CPU cores answers came 13% faster and identical
        (20 of 20 on the bundled samples). The adapter weights stay in place, so
        `trainable_state_dict` still returns them, but do not train after merging."""
        # peft keeps the merged state on each LoRA layer; merging again would only warn
        if self.lora_enabled and not any(getattr(m, "merged", False) for m in self.llm.modules()):
            self.llm.merge_adapter()

    def compact_for_decoding(self, decode_weights: str) -> torch.dtype:
        """Store the frozen LLM's linear weights compactly for one-token decoding steps
        (`decode_weights.py`); returns the dtype now used. Inference only, after
        `merge_lora`, so the LoRA deltas are folded in at full precision first."""
        head = self.llm.get_output_embeddings()
        if isinstance(head, DecodeLinear):
            return head.compact.dtype
        current = head.weight.dtype
        if decode_weights == "auto":
            on_cpu = self.device.type == "cpu"
            plain = self.llm_cfg.quantization == "none" and current == torch.float32
            target = torch.float16 if on_cpu and plain else current
        else:
            target = getattr(torch, decode_weights)
        if target != current and current == torch.float32:
            safe, why = half_kernel_is_safe(target)
            if not safe:  # this CPU's kernel would not give float32's answers: keep float32
                warnings.warn(f"decode weights stay float32 on this CPU: {why}", RuntimeWarning, stacklevel=2)
                return current
            compact_decode_weights(self.llm, target)
            return target
        return current

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

    def save_trainable(self, path: str | Path) -> None:
        """Write the trainable state as safetensors, atomically (temp file + rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: v.contiguous().cpu() for k, v in self.trainable_state_dict().items()}
        meta = {"hidden_size": str(self.hidden_size), "image_dim": str(self.image_dim),
                "n_image_tokens": str(self.n_image_tokens), "n_map_tokens": str(self.prompt_cfg.n_map_tokens),
                "n_base_tokens": str(self.prompt_cfg.n_base_tokens), "lora_r": str(self.llm_cfg.lora_r)}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file(sd, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load_trainable(self, path: str | Path, strict: bool = True) -> None:
        """Load a file written by `save_trainable`."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"trainable-state file not found: {path}")
        self.load_trainable_state_dict(load_file(str(path)), strict=strict)


class _EventStop:
    """Stopping criterion that ends generation once `event` is set (from another thread)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _add_lora(llm: nn.Module, cfg: LLMConfig) -> nn.Module:
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
