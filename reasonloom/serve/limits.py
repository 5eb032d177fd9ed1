"""What a careless or hostile HTTP client may not hold: connections that never finish their
headers, bodies that never arrive, upstream details in what it is sent.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but never one that has sent
nothing or half a request line; each costs a file descriptor until the client leaves, and a
thousand exhaust the default limit (then `/health` fails too). `header_deadline` closes them.
"""
from __future__ import annotations

import re
import resource
from typing import Any

_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.I)
# event fields that may carry an upstream's address or raw error text
_UPSTREAM_FIELDS = {"served_by", "base_url", "url", "endpoint", "detail", "body"}


def header_deadline(base: type, timeout_s: float) -> type:
    """A subclass of uvicorn's HTTP protocol `base` that closes a connection whose next
    request's headers are not complete `timeout_s` after it opened or its last response."""

    class HeaderDeadline(base):   # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            # a new request replaces `self.cycle`; the same cycle at the deadline = no request
            self.loop.call_later(timeout_s, self._header_deadline, self.cycle)

        def _header_deadline(self, seen: Any) -> None:
            if self.cycle is seen and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def raise_fd_limit() -> int:
    """Soft open-file limit up to the hard one (as a deployment's unit file would): idle
    connections wait for their deadline without starving `/health` of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


def error_kind(text: str) -> str:
    """`ContextTooLong: http://10.0.0.3:8000/v1 says ...` -> `ContextTooLong`."""
    head = text.split(":", 1)[0].strip()
    return head if head.isidentifier() else "error"


def public_event(body: dict[str, Any]) -> dict[str, Any]:
    """An event as a client may see it: error texts cut to their kind, upstream fields
    dropped, URLs in any other text redacted (the full event goes to the server log)."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in _UPSTREAM_FIELDS:
            continue
        if key in ("error", "message") and isinstance(value, str):
            out[key] = error_kind(value)
        elif isinstance(value, str):
            out[key] = _URL.sub("[upstream]", value)
        elif isinstance(value, dict):
            out[key] = public_event(value)
        else:
            out[key] = value
    return out
