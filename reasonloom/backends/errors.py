"""Typed backend errors. Retries happen only in the orchestrator, keyed on these types."""
from __future__ import annotations


class BackendError(Exception):
    """Base of every error a backend raises."""

    retryable = False


class RateLimited(BackendError):
    retryable = True

    def __init__(self, message: str = "rate limited", retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ServerError(BackendError):
    retryable = True


class StreamCut(BackendError):
    """A stream ended early; `partial` is what had arrived (never counted as output)."""

    retryable = True

    def __init__(self, message: str = "stream cut", partial: str = ""):
        super().__init__(message)
        self.partial = partial


class Timeout(BackendError):
    retryable = True


class Unreachable(BackendError):
    retryable = True


class BadRequest(BackendError):
    """The request itself is wrong: retrying cannot help."""


class ContextTooLong(BadRequest):
    pass


class CapabilityMissing(BadRequest):
    """The backend cannot do what was asked, and says so instead of faking it."""


class EngineStartError(BackendError):
    """A local engine failed to start; the message carries the engine's own reason."""


class MissingApiKey(ValueError):
    """A role names an API-key variable that is not set: a user's mistake, never retried."""
