"""Answer generation for AnomalyLVLM: greedy or sampled answers for a batch, and one answer
streamed piece by piece for the chat UI (generation runs in a thread; the consumer can stop
it early)."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor


class GenerationMixin:
    """Generation methods of AnomalyLVLM (needs `llm`, `tokenizer`, `llm_cfg`, `eos_token_ids`,
    `pad_token_id` and `prepare_inputs`)."""

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


class _EventStop:
    """Stopping criterion that ends generation once `event` is set (from another thread)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
