"""The HTTP API (FastAPI): inspect an image, keep reference sets, stream answers to questions.

    POST /references                 files=<normal images>        -> {"reference_set_id", ...}
    POST /inspect                     image=<file> [references=<files> | reference_set_id=ID]
                                      [object_name, question, zero_shot]  -> report JSON + report_id
    POST /reports/{report_id}/ask     {"question": "..."}          -> text/event-stream of the answer
    GET  /reports/{report_id}         the report JSON with its chat turns
    GET  /health                      status, model, queue
    GET  /docs, /openapi.json         the OpenAPI page and schema

Every error is JSON {"error": "<one line naming the problem and the fix>"} with a 4xx code
(503 when the queue is full). The assistant is loaded once by the caller and only ever used
on the worker thread (worker.ModelWorker).
"""
from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Iterator

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..inspector import DEFAULT_QUESTION, AnomalyGPT, ReferenceSet
from ..report import InspectionReport
from .store import Store
from .worker import Busy, ModelWorker

MAX_UPLOAD_MB = 25.0
MAX_REFERENCES = 256


class ClientError(Exception):
    """A problem with the request: `status` and one line for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def chat_history(report: InspectionReport) -> list[tuple[str, str]]:
    """The turns asked about a report so far, as the next answer sees them: the assistant
    records every checked turn (question and the text shown) on `report.turns`."""
    return [(turn["question"], turn["text"]) for turn in getattr(report, "turns", None) or []]


class Question(BaseModel):
    question: str = Field(..., min_length=1, max_length=2000, examples=["Where is the anomaly?"])


def _read_upload(name: str, data: bytes, tmp: Path, index: int) -> Any:
    """Decode uploaded bytes with the library's loader (all its odd formats), via a temp file;
    error messages name the upload, not the temp path."""
    from ..images import load_image

    if not data:
        raise ClientError(400, f"upload '{name}' is empty; send the image file's bytes")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).name)[-80:] or "upload"
    path = tmp / f"{index:04d}_{safe}"
    path.write_bytes(data)
    try:
        return load_image(path)
    except ValueError as e:
        raise ClientError(400, str(e).replace(str(path), f"upload '{name}'", 1).replace(str(path), name)) from None


def create_app(assistant: AnomalyGPT, checkpoint: str = "embedded", max_queue: int = 32,
               max_reports: int = 256, max_reference_sets: int = 16) -> FastAPI:
    """The API around an already loaded assistant (the process loads it once, before serving)."""
    worker = ModelWorker(max_queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(title="AnomalyGPT-lite", version=__version__, lifespan=lifespan,
                  description="Industrial inspection: anomaly report of an image, then questions about it. "
                              "Errors are JSON {\"error\": \"...\"}.")
    reports: Store[InspectionReport] = Store("report", max_reports)
    ref_sets: Store[ReferenceSet] = Store("reference set", max_reference_sets)
    started = time.time()
    app.state.worker, app.state.assistant = worker, assistant

    # ------------------------------------------------------------------ errors: one line each
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ClientError)
    async def _client_error(_: Request, e: ClientError) -> JSONResponse:
        return error(e.status, str(e))

    @app.exception_handler(Busy)
    async def _busy(_: Request, e: Busy) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        msg = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            msg = f"missing field '{where}'; see /docs for the fields of this request"
        else:
            msg = f"field '{where}': {msg}; see /docs for the fields of this request"
        return error(422, msg)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        hint = "; see /docs for the API" if e.status_code in (404, 405) else ""
        return error(e.status_code, f"{e.detail}{hint}")

    async def read_all(files: list[UploadFile]) -> list[tuple[str, bytes]]:
        out = []
        for f in files:
            data = await f.read()
            if len(data) > MAX_UPLOAD_MB * 1e6:
                raise ClientError(413, f"upload '{f.filename}' is {len(data) / 1e6:.1f} MB, over the "
                                       f"{MAX_UPLOAD_MB:g} MB limit; send a smaller image")
            out.append((f.filename or f"upload {len(out) + 1}", data))
        return out

    def build_refs(uploads: list[tuple[str, bytes]]) -> ReferenceSet:
        with tempfile.TemporaryDirectory(prefix="anomalygpt-serve-") as tmp:
            images = [_read_upload(n, d, Path(tmp), i) for i, (n, d) in enumerate(uploads)]
        try:
            return assistant.build_references(images)
        except ValueError as e:
            raise ClientError(400, str(e)) from None

    def check_refs(files: list[UploadFile]) -> None:
        if len(files) > MAX_REFERENCES:
            raise ClientError(413, f"{len(files)} reference images, over the {MAX_REFERENCES} limit; send fewer")

    # ------------------------------------------------------------------ endpoints
    @app.get("/health", summary="Liveness and load")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "checkpoint": checkpoint,
                "profile": assistant.cfg.name, "llm": assistant.lvlm is not None,
                "queued": worker.pending, "served": worker.done, "reports": len(reports),
                "reference_sets": len(ref_sets), "uptime_s": round(time.time() - started, 1)}

    @app.post("/references", summary="Store normal reference images; returns a reference_set_id")
    async def add_references(files: Annotated[list[UploadFile], File(description="1-8 (or more) images of normal parts")]
                             ) -> dict[str, Any]:
        check_refs(files)
        uploads = await read_all(files)
        refs = await worker.run(build_refs, uploads)
        key = ref_sets.add(refs)
        return {"reference_set_id": key, "n": refs.n, "threshold": refs.threshold, "threshold_source": refs.source}

    @app.post("/inspect", summary="Inspect one image: the report JSON (with the answer to `question`)")
    async def inspect(
        image: Annotated[UploadFile, File(description="the image to inspect (PNG, JPEG, TIFF, BMP)")],
        references: Annotated[list[UploadFile] | None, File(description="normal images of the same product")] = None,
        reference_set_id: Annotated[str | None, Form(description="id from POST /references")] = None,
        object_name: Annotated[str | None, Form(description="what the part is, e.g. 'solar cell'")] = None,
        question: Annotated[str, Form(description="the first question, answered in the report")] = DEFAULT_QUESTION,
        answer: Annotated[bool, Form(description="false: the detector only, no LLM answer")] = True,
        zero_shot: Annotated[str | None, Form(description="training-free mode: 'self'")] = None,
    ) -> dict[str, Any]:
        references = [r for r in references or [] if r.filename or r.size]
        if references and reference_set_id:
            raise ClientError(400, "give references or reference_set_id, not both")
        refs: ReferenceSet | None = None
        new_ref_id = None
        if reference_set_id:
            try:
                refs = ref_sets.get(reference_set_id)
            except KeyError as e:
                raise ClientError(404, e.args[0]) from None
        check_refs(references)
        (name, data), = await read_all([image])
        ref_uploads = await read_all(references)
        question = question.strip() if answer else ""
        if question and assistant.lvlm is None:
            raise ClientError(400, "this server runs without the LLM (--no-llm); send answer=false for the "
                                   "detector only")

        def job() -> tuple[InspectionReport, ReferenceSet | None]:
            r = build_refs(ref_uploads) if ref_uploads else refs
            with tempfile.TemporaryDirectory(prefix="anomalygpt-serve-") as tmp:
                rgb = _read_upload(name, data, Path(tmp), 0)
            try:
                rep = assistant.inspect(rgb, r, object_name=object_name or None, question=question or None,
                                        zero_shot=zero_shot)
            except ValueError as e:
                raise ClientError(400, str(e)) from None
            return rep, r

        report, used = await worker.run(job)
        report.source = name
        if ref_uploads and used is not None:
            new_ref_id = ref_sets.add(used)
        out = report.to_dict()
        out["report_id"] = reports.add(report)
        out["reference_set_id"] = new_ref_id or reference_set_id
        return out

    def get_report_by_id(report_id: str) -> InspectionReport:
        try:
            return reports.get(report_id)
        except KeyError as e:
            raise ClientError(404, e.args[0]) from None

    @app.get("/reports/{report_id}", summary="A stored report with its chat turns")
    async def get_report(report_id: str) -> dict[str, Any]:
        return get_report_by_id(report_id).to_dict() | {"report_id": report_id}

    @app.post("/reports/{report_id}/ask", summary="Ask about a report; the answer streams as server-sent events",
              response_class=StreamingResponse,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "events `piece` ({\"text\"}) as the answer is generated, then `done` "
                                              "(the checked turn: text, corrected, intent) or `error`"}})
    async def ask(report_id: str, body: Question) -> StreamingResponse:
        report = get_report_by_id(report_id)
        if assistant.lvlm is None:
            raise ClientError(400, "this server runs without the LLM (--no-llm); restart it with the LLM to ask")
        question = body.question.strip()
        if not question:
            raise ClientError(422, "question is blank; send {\"question\": \"...\"}")

        def pieces():
            yield from assistant.stream_ask(report, question, chat_history(report))
            yield _Done(report.turns[-1])  # stream_ask recorded the checked turn

        items = worker.stream(pieces)  # queued now: a full queue is a 503 before the stream starts

        async def events() -> AsyncIterator[str]:
            try:
                async for item in items:
                    if isinstance(item, _Done):
                        yield _sse("done", item.turn)
                    else:
                        yield _sse("piece", {"text": item})
            except Exception as e:  # noqa: BLE001 - the status line is sent already: report in the stream
                yield _sse("error", {"error": f"{type(e).__name__}: {e}".splitlines()[0]})

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


@dataclass
class _Done:
    turn: dict[str, Any]


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` with uvicorn on a free port in a daemon thread; yields its base URL and stops
    it on exit (tests and the bench talk to a real server this way)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.01)
    if not server.started:
        sock.close()
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
