"""The chat prompt around the image: the tokenizer's own chat template, the image block, and
which tokens of an answer are supervised.

Any instruction-tuned model keeps the turn format it was trained on:

    [system] [user: facts \\n <img> IMAGE-EMBEDDINGS </img> \\n question] [assistant: answer] ...

`<img>`/`</img>` are plain text (no new vocabulary), so the frozen embedding matrix and the
tokenizer stay untouched. Text only: the embeddings are spliced in by `AnomalyLVLM`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Short on purpose: every training sequence pays for these tokens, forward and backward.
SYSTEM_PROMPT = "You are an industrial inspection assistant. Answer briefly, only from the measured facts."
IMAGE_OPEN = "<img>"
IMAGE_CLOSE = "</img>"
IGNORE_INDEX = -100
# Placeholder rendered through the chat template and then cut out; the embeddings go where it
# was. A sentinel (not "<img></img>" itself) so user text that happens to contain "<img>" can
# never move the split point.
SPLIT = "<<ANOMALYGPT-IMAGE-EMBEDDINGS>>"
# Used only when a tokenizer has no chat template (a base model): role-prefixed turns ending
# in the tokenizer's eos token, so the model still learns where an answer stops.
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")


class ChatPrompt:
    """Renders chat turns with one tokenizer's template; the image block goes where `SPLIT` is."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.template: str | None = None if getattr(tokenizer, "chat_template", None) else _FALLBACK_TEMPLATE
        self.system_in_user = not self._accepts_system()

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  chat_template=self.template)

    def _accepts_system(self) -> bool:
        """Some templates (Gemma, early Mistral) raise on a system turn; those get it in the user turn."""
        try:
            self.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], True)
            return True
        except Exception:  # noqa: BLE001 - jinja raises its own exception types from the template
            return False

    def stop_token_ids(self, generation_eos: int | list[int] | None = None) -> list[int]:
        """eos ids for generation: the tokenizer's eos plus the template's end-of-turn token.

        Chat models often end a turn with a token other than eos (e.g. <|eot_id|>); it is read
        off the template by rendering a dummy answer, so no model-specific table is needed.
        """
        ids: list[int] = []
        eos = self.tokenizer.eos_token_id
        if eos is not None:
            ids.append(int(eos))
        try:
            _, _, tail = self.answer_text([{"role": "user", "content": "Hi"}], "OK")
            tail_ids = self.tokenizer(tail, add_special_tokens=False).input_ids
            if len(tail_ids) == 1:
                ids.append(int(tail_ids[0]))
        except ValueError:
            pass
        if not ids and generation_eos is not None:
            ids += [generation_eos] if isinstance(generation_eos, int) else list(generation_eos)
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
        image_block = f"{IMAGE_OPEN}{SPLIT}{IMAGE_CLOSE}"
        first_q = history[0][0] if history else question
        first = "\n".join(p for p in ((facts or "").strip(), image_block, first_q.strip()) if p)
        msgs: list[dict[str, str]] = []
        if self.system_in_user:
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
        return self.render(self.build_messages(question, facts, history), True).replace(SPLIT, "")

    def answer_text(self, messages: list[dict[str, str]], answer: str) -> tuple[str, str, str]:
        """(prompt text, supervised completion, unsupervised tail) for an assistant answer.

        The completion is whatever the template appends after the generation prompt when the
        answer is added (answer + end-of-turn marker); trailing whitespace (ChatML's newline)
        is not supervised, since generation stops at the end-of-turn token before it.
        """
        prompt = self.render(messages, True)
        full = self.render(messages + [{"role": "assistant", "content": answer}], False)
        if not full.startswith(prompt):
            raise ValueError("this chat template renders the assistant turn in a way that does not extend the "
                             "generation prompt; AnomalyLVLM cannot find the answer tokens for it")
        completion = full[len(prompt):]
        sup = completion.rstrip()
        idx = sup.rfind(answer)
        tail = sup[idx + len(answer):] if idx >= 0 else ""
        return prompt, sup, tail

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []
