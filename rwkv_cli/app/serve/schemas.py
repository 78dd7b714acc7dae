"""Request bodies checked and response bodies written, as the OpenAI API documents them.

`parse_completion` and `parse_chat` turn a decoded JSON body into a `CompletionRequest` or
raise an `APIError` (400 for a wrong type or an option this server does not have, 404 for
another model). Value ranges (a top_p of 2, a negative max_tokens) are the library's to judge:
its `InvalidArgument` names the option, and the handler turns it into a 400 with that `param`.

`ResponseWriter` writes the responses of one request: the whole JSON body, or the SSE events
of a stream. Stream chunks are built from a prefix and suffix made once per request, so a
token costs one `json.dumps` of its text.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from ...core.results import CompletionResult, Usage
from .errors import APIError, bad_request, model_not_found, not_supported

# OpenAI's documented default for /v1/completions.
COMPLETION_MAX_TOKENS = 16
# Chat replies end at the turn's blank line; this bounds one that never does (OpenAI has no
# fixed default: its models stop at their context length, which RWKV does not have).
CHAT_MAX_TOKENS = 1024

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH_REASONS = {"length": "length", "stop": "stop", "eos": "stop"}

Check = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_stop(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )


# name -> (check, what the value should be); null is accepted for every optional field.
FIELDS: dict[str, tuple[Check, str]] = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "max_tokens": (_is_int, "an integer"),
    "max_completion_tokens": (_is_int, "an integer"),
    "temperature": (_is_number, "a number"),
    "top_p": (_is_number, "a number"),
    "top_k": (_is_int, "an integer"),
    "presence_penalty": (_is_number, "a number"),
    "frequency_penalty": (_is_number, "a number"),
    "stop": (_is_stop, "a string or an array of strings"),
    "seed": (_is_int, "an integer"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "n": (_is_int, "an integer"),
}

# Options of the API this server does not have: name -> (in use?, what it is). Each is a 400
# "not supported" when given with a value that asks for it (the default values are fine).
UNSUPPORTED: dict[str, tuple[Check, str]] = {
    "n": (lambda v: v != 1, "more than one choice (n > 1)"),
    "best_of": (lambda v: v != 1, "best_of"),
    "logprobs": (lambda v: v is not False, "logprobs"),
    "top_logprobs": (lambda v: True, "top_logprobs"),
    "echo": (lambda v: v is not False, "echo"),
    "suffix": (lambda v: v != "", "suffix (insertion)"),
    "logit_bias": (lambda v: v != {}, "logit_bias"),
    "tools": (lambda v: v != [], "tool calling (tools)"),
    "functions": (lambda v: v != [], "function calling (functions)"),
    "tool_choice": (lambda v: v != "none", "tool calling (tool_choice)"),
    "function_call": (lambda v: v != "none", "function calling (function_call)"),
    "response_format": (
        lambda v: not (isinstance(v, dict) and v.get("type") == "text"),
        "a response_format other than text",
    ),
}


@dataclass
class CompletionRequest:
    """What one request asks for, checked for types; `options()` are `RWKV.completion`'s."""

    endpoint: str  # "completions" or "chat"
    model: str | None
    prompt: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    max_tokens: int = COMPLETION_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None

    def options(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "stop": self.stop or None,
            "seed": self.seed,
        }


def _check_fields(body: Mapping[str, Any]) -> None:
    for name, (check, expected) in FIELDS.items():
        value = body.get(name)
        if value is not None and not check(value):
            raise bad_request(f"{name} must be {expected}, not {json.dumps(value)[:80]}", name)
    for name, (in_use, what) in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and in_use(value):
            raise not_supported(name, what)


def _common(endpoint: str, body: Mapping[str, Any], served_model: str,
            default_max_tokens: int) -> CompletionRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    _check_fields(body)
    model = body.get("model")
    if model is not None and model != served_model:
        raise model_not_found(model, served_model)
    stream_options = body.get("stream_options") or {}
    include_usage = stream_options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("stream_options.include_usage must be a boolean",
                          "stream_options.include_usage")
    stop = body.get("stop")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens")

    def pick(name: str, default: Any) -> Any:
        value = body.get(name)
        return default if value is None else value

    return CompletionRequest(
        endpoint=endpoint,
        model=model,
        max_tokens=default_max_tokens if max_tokens is None else max_tokens,
        temperature=pick("temperature", 1.0),
        top_p=pick("top_p", 1.0),
        top_k=pick("top_k", 0),
        presence_penalty=pick("presence_penalty", 0.0),
        frequency_penalty=pick("frequency_penalty", 0.0),
        stop=[stop] if isinstance(stop, str) else list(stop or []),
        seed=body.get("seed"),
        stream=bool(body.get("stream")),
        include_usage=include_usage,
        user=body.get("user"),
    )


def parse_completion(body: Any, served_model: str) -> CompletionRequest:
    """A /v1/completions body: `prompt` is a string (or an array holding one string)."""
    request = _common("completions", body, served_model, COMPLETION_MAX_TOKENS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise bad_request("prompt is required", "prompt")
    if isinstance(prompt, list):
        what = "token arrays" if prompt and not isinstance(prompt[0], str) else "several prompts"
        raise not_supported("prompt", f"{what} in one request")
    if not isinstance(prompt, str):
        raise bad_request("prompt must be a string", "prompt")
    request.prompt = prompt
    return request


def _message_text(index: int, content: Any) -> str:
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(f"{param} must be a string or an array of content parts",
                                  param)
            if part["type"] != "text":
                raise not_supported(param, f"{part['type']} content")
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{param}: a text part needs a string `text`", param)
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"{param} must be a string or an array of content parts", param)


def parse_chat(body: Any, served_model: str) -> CompletionRequest:
    """A /v1/chat/completions body: `messages` of the roles system (or developer), user and
    assistant, with text content."""
    request = _common("chat", body, served_model, CHAT_MAX_TOKENS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array of messages", "messages")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{index}] must be an object", f"messages[{index}]")
        role = message.get("role")
        if role in ("tool", "function"):
            raise not_supported(f"messages[{index}].role", f"the {role} role (tool calling)")
        if role not in ROLES:
            raise bad_request(
                f"messages[{index}].role must be system, developer, user or assistant, not "
                f"{json.dumps(role)[:40]}", f"messages[{index}].role",
            )
        if message.get("tool_calls"):
            raise not_supported(f"messages[{index}].tool_calls", "tool calling")
        checked.append({"role": ROLES[role], "content": _message_text(index, message.get("content"))})
    request.messages = checked
    return request


# ---- responses ----


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.prompt_tokens_cached},
    }


def finish_reason(reason: str) -> str:
    """OpenAI's finish reasons: the end-of-text token is a stop like a stop string."""
    return FINISH_REASONS.get(reason, reason)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ResponseWriter:
    """The bodies of one request's response: `body(result)`, or SSE events for a stream."""

    def __init__(self, request: CompletionRequest, model: str):
        self.chat = request.endpoint == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model
        self.include_usage = request.include_usage
        head = {"id": self.id, "object": "chat.completion.chunk" if self.chat else
                "text_completion", "created": self.created, "model": self.model}
        self._head = _dumps(head)[:-1]  # without the closing brace: choices follow
        self._usage_null = ',"usage":null' if self.include_usage else ""
        if self.chat:
            self._piece_open = ',"choices":[{"index":0,"delta":{"content":'
            self._piece_close = '},"logprobs":null,"finish_reason":null}]' + self._usage_null
        else:
            self._piece_open = ',"choices":[{"index":0,"text":'
            self._piece_close = ',"logprobs":null,"finish_reason":null}]' + self._usage_null

    # -- a stream --

    @staticmethod
    def event(data: str) -> bytes:
        return f"data: {data}\n\n".encode()

    def opening_event(self) -> bytes | None:
        """The chat stream's first chunk, which names the role (none for completions)."""
        if not self.chat:
            return None
        return self.event(
            self._head + ',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}]' + self._usage_null + "}"
        )

    def piece_event(self, text: str) -> bytes:
        return self.event(self._head + self._piece_open + _dumps(text) + self._piece_close + "}")

    def finish_event(self, reason: str) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        choice.update(logprobs=None, finish_reason=finish_reason(reason))
        return self.event(self._head + ',"choices":' + _dumps([choice]) + self._usage_null + "}")

    def usage_event(self, usage: Usage) -> bytes:
        return self.event(self._head + ',"choices":[],"usage":' + _dumps(usage_body(usage)) + "}")

    def error_event(self, error: APIError) -> bytes:
        return self.event(_dumps(error.body()))

    DONE = b"data: [DONE]\n\n"

    # -- a whole response --

    def body(self, result: CompletionResult) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.completion.strip()}
        else:
            choice["text"] = result.completion
        choice.update(logprobs=None, finish_reason=finish_reason(result.finish_reason))
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_body(result.usage),
        }
