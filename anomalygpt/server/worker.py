"""One thread owns the model: requests queue for it in arrival order.

WHY a worker thread rather than a lock around each call: a streamed answer is produced
piece by piece while the HTTP response is being sent. Holding a lock across those sends
ties the model to the client, and a client that disconnects mid-stream would leave the lock
held until its generator is garbage-collected. Here the worker runs every job to its end
(an answer is at most llm.max_new_tokens tokens) and hands the pieces over through a
queue; a vanished client only means nobody reads them.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


class Busy(Exception):
    """More requests are waiting than the server accepts (HTTP 503)."""


class ModelWorker:
    """Runs callables on one thread, in submission order, refusing more than `max_queue` waiting."""

    def __init__(self, max_queue: int = 32) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anomalygpt-model")
        self._lock = threading.Lock()
        self._pending = 0
        self.max_queue = max_queue
        self.done = 0

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    def submit(self, fn: Callable[..., T], *args: Any) -> Future:
        with self._lock:
            if self._pending >= self.max_queue:
                raise Busy(f"the server is busy ({self._pending} requests queued); retry in a few seconds")
            self._pending += 1
        fut = self._pool.submit(fn, *args)
        fut.add_done_callback(self._finished)
        return fut

    def _finished(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1
            self.done += 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Await `fn(*args)` run on the model thread."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def stream(self, make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
        """The items of the iterator `make()` returns, produced on the model thread and
        delivered to the event loop as they come. The job is queued now (so a full queue
        raises Busy before any response starts); an exception inside it is re-raised to the
        reader after the items produced before it."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def job() -> None:
            try:
                for item in make():
                    loop.call_soon_threadsafe(q.put_nowait, item)
            except BaseException as e:  # noqa: BLE001 - handed to the reader
                loop.call_soon_threadsafe(q.put_nowait, _Raised(e))
            finally:
                loop.call_soon_threadsafe(q.put_nowait, _END)

        self.submit(job)

        async def items() -> AsyncIterator[Any]:
            while True:
                item = await q.get()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                yield item

        return items()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error
