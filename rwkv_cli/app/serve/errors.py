"""Errors as the OpenAI API shapes them: `{"error": {"message", "type", "param", "code"}}`.

Every failure a handler can meet ends up here as an `APIError` with its HTTP status, so a bad
request gets a body that OpenAI clients parse (their exceptions show `message`) and nothing
else of the server is disturbed.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import RWKVError

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
SERVER = "server_error"

# How long a client refused for a full queue should wait before trying again (seconds): a
# slot frees as soon as any running completion ends, and completions run for seconds.
RETRY_AFTER_SECONDS = 1


class APIError(RWKVError):
    """A response with an OpenAI-shaped error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type: str = INVALID_REQUEST,  # the field's name in the API
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json_bytes(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False).encode()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(message, 400, INVALID_REQUEST, code, param)


def not_supported(param: str, what: str) -> APIError:
    return APIError(f"{param}: {what} is not supported by this server", 400, INVALID_REQUEST,
                    "unsupported_parameter", param)


def model_not_found(asked: str, served: str) -> APIError:
    return APIError(
        f"the model {asked!r} does not exist here: this server serves {served!r}", 404,
        INVALID_REQUEST, "model_not_found", "model",
    )


def body_too_large(limit: int) -> APIError:
    return APIError(f"the request body is larger than {limit} bytes", 413, INVALID_REQUEST,
                    "request_too_large")


def unauthorized(given: bool) -> APIError:
    message = (
        "incorrect API key provided" if given
        else "no API key provided: send it as `Authorization: Bearer KEY`"
    )
    return APIError(message, 401, AUTHENTICATION, "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def overloaded(running: int, waiting: int) -> APIError:
    return APIError(
        f"the server is at capacity ({running} completions running, {waiting} waiting): "
        f"retry after {RETRY_AFTER_SECONDS} s",
        503, SERVER, "server_overloaded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def shutting_down() -> APIError:
    return APIError("the server is shutting down", 503, SERVER, "server_shutting_down")
