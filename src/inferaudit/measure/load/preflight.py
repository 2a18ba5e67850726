"""Before the load: the API key, ``GET /models`` and the preflight check, as one-line errors.

:func:`fetch_models` and :func:`check_endpoint` turn library exceptions into one-line
:class:`~inferaudit.errors.EndpointError` messages; :func:`error_message` takes the human part
of an error body (also used for the records of failed requests).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import aiohttp
import orjson

from inferaudit.errors import ConfigError, EndpointError
from inferaudit.measure.protocol import Endpoint

__all__ = [
    "ERROR_MESSAGE_CHARS",
    "acheck_endpoint",
    "api_key_for",
    "check_endpoint",
    "error_message",
    "fetch_models",
    "model_ids",
]

ERROR_MESSAGE_CHARS = 200


def api_key_for(endpoint: Endpoint) -> str | None:
    """The API key named by ``endpoint.api_key_env`` (None when it names none)."""
    if endpoint.api_key_env is None:
        return None
    value = os.environ.get(endpoint.api_key_env)
    if not value:
        raise ConfigError(
            f"--api-key-env {endpoint.api_key_env}: that environment variable is not set or empty"
        )
    return value


def error_message(body: bytes) -> str:
    """The human part of an error body: OpenAI ``error.message``, ``message``, ``detail``."""
    text: Any = None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            text = err.get("message")
        elif isinstance(err, str):
            text = err
        text = text or obj.get("message") or obj.get("detail")
    if not isinstance(text, str) or not text:
        text = body.decode("utf-8", "replace")
    one_line: str = re.sub(r"\s+", " ", text).strip()
    return one_line[:ERROR_MESSAGE_CHARS]


async def fetch_models(
    endpoint: Endpoint, api_key: str | None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """``GET {base}/models`` as JSON; every failure is one-line :class:`EndpointError`."""
    url = f"{endpoint.base_url}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(url, headers=headers) as resp,
        ):
            raw = await resp.read()
            if resp.status in (401, 403):
                raise EndpointError(
                    f"endpoint refused credentials (HTTP {resp.status}): set --api-key-env"
                )
            if resp.status != 200:
                raise EndpointError(f"GET {url} answered HTTP {resp.status}: {error_message(raw)}")
    except aiohttp.ClientConnectorError as exc:
        err = exc.os_error
        reason = os.strerror(err.errno) if err.errno else (err.strerror or str(err))
        raise EndpointError(f"cannot reach {url}: {reason.lower()}") from None
    except TimeoutError:
        raise EndpointError(f"cannot reach {url}: no answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise EndpointError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    try:
        models = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise EndpointError(f"GET {url} did not answer JSON") from None
    if not isinstance(models, dict):
        raise EndpointError(f"GET {url} did not answer a JSON object")
    return models


def model_ids(models: dict[str, Any]) -> list[str]:
    """Model ids listed by a ``/v1/models`` answer (``data[].id``)."""
    data = models.get("data")
    if not isinstance(data, list):
        return []
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def acheck_endpoint(endpoint: Endpoint, api_key: str | None) -> dict[str, Any]:
    """Preflight: the endpoint answers, accepts the credentials and serves the model."""
    models = await fetch_models(endpoint, api_key)
    ids = model_ids(models)
    if endpoint.model not in ids:
        listed = ", ".join(ids) if ids else "nothing"
        raise EndpointError(
            f"model {endpoint.model!r} is not served here; /v1/models lists: {listed}"
        )
    return models


def check_endpoint(endpoint: Endpoint, api_key: str | None) -> dict[str, Any]:
    """Synchronous :func:`acheck_endpoint` (returns the ``/v1/models`` answer)."""
    return asyncio.run(acheck_endpoint(endpoint, api_key))
