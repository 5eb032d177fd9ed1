"""One event stream drives the progress display, chat client, server SSE and JSONL trace."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

@dataclass(slots=True)
class Event:
    kind: str
    node: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    t: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "node": self.node, "t": self.t, **self.data}


Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out: subscribers must be quick (queue or write, never block)."""

    def __init__(self) -> None:
        # a tuple, replaced on (un)subscribe: emit fans out without copying it per event
        self._subscribers: tuple[Subscriber, ...] = ()
        self.first_answer_t: float | None = None

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subscribers += (fn,)
        return lambda: self._unsubscribe(fn)

    def _unsubscribe(self, fn: Subscriber) -> None:
        subscribers = list(self._subscribers)
        subscribers.remove(fn)
        self._subscribers = tuple(subscribers)

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def emit(self, kind: str, node: str | None = None, /, **data: Any) -> None:
        if kind == "token_delta" and data.get("answer") and self.first_answer_t is None:
            self.first_answer_t = time.time()
        if not self._subscribers:
            return
        event = Event(kind, node, data, time.time())
        for fn in self._subscribers:
            fn(event)
