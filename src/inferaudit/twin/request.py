"""Request parsing: an OpenAI request body validated into the parameters the twin honours.

Errors are OpenAI-shaped (``ApiError.response()``: ``{"error": {message, type, param, code}}``).
Honoured: ``max_tokens`` (chat also ``max_completion_tokens``), ``min_tokens``, ``ignore_eos``,
``seed``, ``temperature``, ``stream``, ``stream_options.include_usage``, ``logprobs`` (chat:
``logprobs``/``top_logprobs``); ``n`` must be 1; other sampling parameters are ignored.

The prompt as the twin renders it (``Params.prompt``, what its tokens are counted from):
completions: the prompt string (a list of token ids: the ids in decimal, one word each); chat:
every message's text content in order (any role: system, user, assistant, tool, ...), joined
by newlines; a message's content is a string, a list of ``text`` parts (each part's text is
one piece) or ``null`` (no piece; e.g. an assistant message that only called a tool). Roles and
template tokens are not rendered. ``Params.roles`` lists the messages' roles in order (empty for
completions) and ``Params.last_user`` is the last ``user`` message's content, its parts joined
by newlines (``""`` for ``null``), or None when there is no user message (completions too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from inferaudit.twin import text
from inferaudit.twin.config import MAX_TOP_LOGPROBS


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        param: str | None = None,
        code: str | int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = status if code is None else code

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }
        return web.Response(
            status=self.status, body=orjson.dumps(body), content_type="application/json"
        )


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param)


@dataclass(frozen=True)
class Params:
    api: str  # "completions" | "chat"
    prompt: str
    prompt_tokens: int
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    seed: int | None
    temperature: float
    stream: bool
    include_usage: bool
    top_logprobs: int | None = None  # None: logprobs not asked for
    roles: tuple[str, ...] = ()  # chat: each message's role, in order
    last_user: str | None = None  # chat: the last user message's text content


def _int(body: dict[str, Any], key: str, default: int | None, lo: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{key} must be an integer", key)
    if value < lo:
        raise bad_request(f"{key} must be >= {lo}, got {value}", key)
    return value


def _count(body: dict[str, Any], key: str, default: int, lo: int) -> int:
    """An integer parameter with a default (an explicit ``null`` means the default)."""
    value = _int(body, key, None, lo)
    return default if value is None else value


@dataclass(frozen=True)
class _Rendered:
    prompt: str
    roles: tuple[str, ...] = ()
    last_user: str | None = None


def _completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return " ".join(str(t) for t in prompt)  # token ids: one word per id
    if not isinstance(prompt, str):
        raise bad_request(
            "prompt must be a string (or one string, or a list of token ids)", "prompt"
        )
    return prompt


def _message_pieces(message: object) -> tuple[str, list[str]]:
    """One chat message's role and the pieces of its text content."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise bad_request("each message needs a role and content", "messages")
    role: str = message["role"]
    content = message.get("content")
    if isinstance(content, str):
        return role, [content]
    if isinstance(content, list):
        pieces: list[str] = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_request("only text content parts are supported", "messages")
            pieces.append(str(part.get("text", "")))
        return role, pieces
    if content is not None:
        raise bad_request("message content must be a string or a list of parts", "messages")
    return role, []


def _render(api: str, body: dict[str, Any]) -> _Rendered:
    if api == "completions":
        return _Rendered(_completion_prompt(body))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    parts: list[str] = []
    roles: list[str] = []
    last_user: str | None = None
    for message in messages:
        role, pieces = _message_pieces(message)
        roles.append(role)
        parts.extend(pieces)
        if role == "user":
            last_user = "\n".join(pieces)
    return _Rendered("\n".join(parts), tuple(roles), last_user)


def parse_params(api: str, body: dict[str, Any], max_model_len: int) -> Params:
    """Validate an OpenAI request body into the parameters the twin honours."""
    rendered = _render(api, body)
    prompt = rendered.prompt
    prompt_tokens = text.count_prompt_tokens(prompt)
    key = "max_tokens"
    if api == "chat" and body.get("max_tokens") is None:
        key = "max_completion_tokens"
    default = 16 if api == "completions" else max(1, max_model_len - prompt_tokens)
    max_tokens = _count(body, key, default, 1)
    min_tokens = _count(body, "min_tokens", 0, 0)
    if min_tokens > max_tokens:
        raise bad_request(
            f"min_tokens ({min_tokens}) must be <= max_tokens ({max_tokens})", "min_tokens"
        )
    if prompt_tokens + max_tokens > max_model_len:
        raise bad_request(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the "
            f"model's context length {max_model_len}",
            key,
        )
    n = _count(body, "n", 1, 1)
    if n != 1:
        raise bad_request("only n=1 is supported", "n")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad_request("ignore_eos must be a boolean", "ignore_eos")
    seed = _int(body, "seed", None, -(2**63))
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise bad_request("temperature must be a number", "temperature")
    if not 0.0 <= temperature <= 2.0:
        raise bad_request(f"temperature must be in [0, 2], got {temperature}", "temperature")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("stream_options.include_usage must be a boolean", "stream_options")
    if api == "chat":
        wanted = body.get("logprobs", False)
        if not isinstance(wanted, bool):
            raise bad_request("logprobs must be a boolean", "logprobs")
        top = _count(body, "top_logprobs", 0, 0) if wanted else None
    else:
        top = _int(body, "logprobs", None, 0)
    if top is not None and top > MAX_TOP_LOGPROBS:
        raise bad_request(f"at most {MAX_TOP_LOGPROBS} top logprobs, asked {top}", "logprobs")
    return Params(
        api=api,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=ignore_eos,
        seed=seed,
        temperature=float(temperature),
        stream=stream,
        include_usage=include_usage and stream,
        top_logprobs=top,
        roles=rendered.roles,
        last_user=rendered.last_user,
    )
