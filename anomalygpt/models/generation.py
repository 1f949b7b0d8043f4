"""Answer generation for AnomalyLVLM: greedy or sampled answers for a batch, and one answer
streamed piece by piece for the chat UI (generation runs in a thread; the consumer can stop
it early).

Greedy answers go to `token_decoder` when one is set (the inspector sets llama.cpp's,
anomalygpt.llama_runtime): it gets the same prompt embeddings, stop ids and token budget
and returns token ids, which become text here through the same tokenizer and streamer as
torch's, so the two runtimes differ only in the arithmetic of the decoding itself."""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor


class TokenDecoder(Protocol):
    """An inference runtime for greedy answers (anomalygpt.llama_runtime.LlamaDecoder)."""

    def fits(self, n_prompt: int, max_new_tokens: int) -> bool: ...

    def generate_ids(self, embeds: Tensor, max_new_tokens: int, stop_ids: Sequence[int],
                     min_new_tokens: int = 0) -> Iterator[int]: ...


class GenerationMixin:
    """Generation methods of AnomalyLVLM (needs `llm`, `tokenizer`, `llm_cfg`, `eos_token_ids`,
    `pad_token_id`, `prepare_inputs` and `token_decoder`)."""

    token_decoder: TokenDecoder | None = None

    def _decoder_for(self, do_sample: bool, n_prompt: int, max_new_tokens: int) -> TokenDecoder | None:
        """The external decoder when it takes this answer: greedy, and the prompt fits its context."""
        dec = self.token_decoder
        if dec is None or do_sample or not dec.fits(n_prompt, max_new_tokens):
            return None
        return dec

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
        budget = max_new_tokens or self.llm_cfg.max_new_tokens
        dec = self._decoder_for(do_sample, batch.inputs_embeds.shape[1], budget)
        if dec is not None:  # one answer at a time, each prompt without its left padding
            ids = [list(dec.generate_ids(e[m.bool()], budget, self.eos_token_ids))
                   for e, m in zip(batch.inputs_embeds, batch.attention_mask)]
            return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
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
        budget = max_new_tokens or self.llm_cfg.max_new_tokens
        dec = self._decoder_for(do_sample, batch.inputs_embeds.shape[1], budget)
        if dec is not None:
            yield from _strip_start(_stream_ids(self.tokenizer, dec.generate_ids(
                batch.inputs_embeds[0], budget, self.eos_token_ids, min_new_tokens)))
            return
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
            yield from _strip_start(streamer)
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


def _strip_start(pieces: Iterable[str]) -> Iterator[str]:
    """The pieces without the answer's leading whitespace and without empty pieces."""
    started = False
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        if piece:
            yield piece


def _stream_ids(tokenizer: Any, ids: Iterator[int]) -> Iterator[str]:
    """Text pieces of a token-id stream, cut exactly as torch's streamer cuts them (the same
    transformers TextStreamer, fed here one id at a time). Closing this closes `ids`."""
    from transformers import TextStreamer

    pieces: list[str] = []

    class _Collect(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            pieces.append(text)

    streamer = _Collect(tokenizer, skip_prompt=False, skip_special_tokens=True)
    try:
        for tok in ids:
            streamer.put(torch.tensor([tok]))
            yield from pieces
            pieces.clear()
        streamer.end()
        yield from pieces
    finally:
        close = getattr(ids, "close", None)
        if close is not None:
            close()
