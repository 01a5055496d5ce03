"""Serving errors: GlassError children that also know their HTTP status and OpenAI error code."""

from glassgpt.errors import GlassError


class ServeError(GlassError):
    """A request or server setup that cannot be served; maps to an HTTP error."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None
    retry_after = 1  # seconds, sent as `retry-after` with a 429 or 503

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ContextLengthError(ServeError):
    code = "context_length_exceeded"


class OverloadedError(ServeError):
    status = 503
    type = "server_error"
    code = "overloaded"


class AuthError(ServeError):
    status = 401
    code = "invalid_api_key"


class RateLimitError(ServeError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
