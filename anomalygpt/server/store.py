"""Reports and reference sets kept between requests, by id, the oldest dropped first.

WHY bounded: a report holds its anomaly map at the image's size (a 2000 x 2000 photo is
16 MB as float32) and the model inputs for follow-up questions; a server that kept every
one would grow without end. Clients that ask about a dropped report get a 404 that says so.
"""
from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class Store(Generic[V]):
    def __init__(self, kind: str, capacity: int) -> None:
        self.kind = kind
        self.capacity = max(1, capacity)
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, value: V) -> str:
        key = secrets.token_hex(8)
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> V:
        """The value, refreshed as recently used; KeyError with a message for a client."""
        with self._lock:
            if key not in self._items:
                raise KeyError(f"unknown {self.kind} id '{key}' (the server keeps the last {self.capacity}; "
                               "ids do not survive a restart); create it again")
            self._items.move_to_end(key)
            return self._items[key]

    def __len__(self) -> int:
        return len(self._items)
