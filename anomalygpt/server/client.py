"""Thin client of `anomalygpt serve` (requests only, no torch): what `anomalygpt inspect
--server URL` uses, and a reader of the answer's server-sent events."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import requests


class ServerError(Exception):
    """The server refused a request or could not be reached: one line for the user."""


def parse_sse(lines: Iterable[str | bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs from the text lines of a text/event-stream whose data is JSON."""
    event, data = "message", []
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode()
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield event, json.loads("\n".join(data))


class Client:
    def __init__(self, url: str, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            r = self.session.request(method, self.url + path, timeout=self.timeout, **kw)
        except requests.ConnectionError:
            raise ServerError(f"cannot reach {self.url}; start it with `anomalygpt serve` or check --server") from None
        if r.status_code >= 400:
            try:
                msg = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                msg = r.text.strip()[:200] or r.reason
            raise ServerError(f"server {r.status_code}: {msg}")
        return r

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health").json()

    def add_references(self, paths: list[str | Path]) -> dict[str, Any]:
        files = [("files", (Path(p).name, Path(p).read_bytes())) for p in paths]
        return self._call("POST", "/references", files=files).json()

    def inspect(self, path: str | Path, reference_set_id: str | None = None, object_name: str | None = None,
                question: str | None = None, zero_shot: str | None = None) -> dict[str, Any]:
        form = {k: v for k, v in {"reference_set_id": reference_set_id, "object_name": object_name,
                                   "zero_shot": zero_shot}.items() if v}
        if question:
            form["question"] = question
        else:
            form["answer"] = "false"
        files = {"image": (Path(path).name, Path(path).read_bytes())}
        return self._call("POST", "/inspect", files=files, data=form).json()

    def ask(self, report_id: str, question: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The answer's events: ("piece", {"text"})..., then ("done", turn) or ("error", {"error"})."""
        r = self._call("POST", f"/reports/{report_id}/ask", json={"question": question}, stream=True)
        with r:
            yield from parse_sse(r.iter_lines())
