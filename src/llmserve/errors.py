"""The one exception tree. Engines raise these; ``server/errors.py`` turns them into HTTP."""

from __future__ import annotations


class LLMServeError(Exception):
    """Base of every error llmserve raises on purpose."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(LLMServeError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    """A parameter the chosen engine cannot honour: rejected, never silently ignored."""

    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class RequestTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class Unauthorized(LLMServeError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(LLMServeError):
    """A valid key that may not do this (run-time management needs an admin key)."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class NotFound(LLMServeError):
    """A file, batch or other object that does not exist (or belongs to another key)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Conflict(LLMServeError):
    """The object is not in a state that allows this (e.g. cancelling a completed batch)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class ModelNotFound(LLMServeError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class RateLimited(LLMServeError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Overloaded(LLMServeError):
    """The server cannot take the request now (queue full, still loading): 503 + Retry-After."""

    status_code = 503
    error_type = "server_overloaded"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerShuttingDown(Overloaded):
    """The server is draining for a restart: no new work, and work past the drain deadline ends."""

    code = "server_shutting_down"


class QueueTimeout(Overloaded):
    code = "queue_timeout"


class ModelLoading(Overloaded):
    code = "model_loading"


class EngineStalled(Overloaded):
    """The engine has had work but made no progress for ``watchdog_timeout`` seconds."""

    code = "engine_stalled"


class EngineError(LLMServeError):
    """The backend failed; the request is lost but the server stays up."""

    code = "engine_error"


class EngineUnavailable(EngineError):
    """The chosen engine cannot be imported here (its package is missing or broken); the
    message says how to install it."""

    code = "engine_unavailable"


class InvalidModel(EngineError):
    """The model path is not a model the engine can load: not a model at all, a corrupt or
    truncated file, an architecture the engine does not support."""

    code = "invalid_model"
