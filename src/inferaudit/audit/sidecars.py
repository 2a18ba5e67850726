"""Side endpoints scraped while the load runs: the server's ``/metrics`` and a telemetry agent.

A :class:`Scraper` is one thread in the parent process that GETs one URL and keeps one
:class:`~inferaudit.measure.scrapes.ScrapeLine` per sample, in the order taken:

    1. ``before()``: one blocking sample right before ``run_load`` (so before the epoch, which
       ``run_load`` sets once its workers are ready), then the thread starts;
    2. the thread: one "during" sample every ``interval_s`` from the "before" sample on (a
       tick missed because a GET took longer is skipped, not made up);
    3. ``after()``: the thread is stopped, then one blocking sample right after the load ended,
       before the audit block;
    4. ``finish(epoch_ns)``: the lines are written to ``path`` with ``t_ns`` on the run's epoch
       clock (``perf_counter_ns`` at the GET's start minus ``LoadResult.epoch_ns``: negative
       before the epoch).

The clock: the sampler records absolute ``perf_counter_ns`` values and converts them once the
epoch is known (step 4). Each sample is also appended and flushed, as taken, to the spool
``path + ".partial"`` with ``t_ns`` absolute; ``finish`` writes ``path`` whole (a temporary file
renamed over it) and removes the spool. A run that dies in ``run_load`` (``close()``) keeps the
spool only: its times are absolute because the epoch was never known, and it is no evidence.

A GET: 2 s for the whole answer, at most 4 MiB, no redirects followed, no proxy. A failed sample
(unreachable, not 200, too big or slow, not UTF-8, the parser's ``DataError``) is a line with
``ok`` false and its one-line ``error``; it never raises out of the run. A bug in the thread is
re-raised by ``after()``. A spool that cannot be written is a ``StorageError`` from ``after()``.

The endpoint's API key (``Authorization: Bearer``) goes to the metrics URL only when it is on
the endpoint's own origin (scheme, host and port): never to another host, and never to a
telemetry agent (the operator's sidecar). It is written nowhere.

``probe_metrics(base_url)``: the default metrics URL, the endpoint's base without ``/v1`` plus
``/metrics``, when a GET of it answers 200 with Prometheus text; else None.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Literal

import orjson
from pydantic import BaseModel

from inferaudit.errors import (
    ConfigError,
    DataError,
    EndpointError,
    InferauditError,
    StorageError,
)
from inferaudit.measure.scrapes import Phase, ScrapeLine, telemetry_reading
from inferaudit.measure.server_metrics import parse_metrics, reading

__all__ = [
    "INTERVAL_S",
    "MAX_BYTES",
    "SPOOL_SUFFIX",
    "TIMEOUT_S",
    "Parse",
    "ScrapeSummary",
    "Scraper",
    "Sidecars",
    "check_options",
    "check_url",
    "fetch",
    "key_headers",
    "metrics_url",
    "probe_metrics",
    "start_sidecars",
]

INTERVAL_S = 1.0
TIMEOUT_S = 2.0
MAX_BYTES = 4 << 20
SPOOL_SUFFIX = ".partial"
_READ_BLOCK = 64 << 10
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"

# A scrape's parser: the text of a 200 answer -> a model whose fields follow the envelope on
# the line (every field with a default); a ``DataError`` for text it refuses.
Parse = Callable[[str], BaseModel]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 30x is then an HTTPError: the key never follows a redirect


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def fetch(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    timeout_s: float = TIMEOUT_S,
    max_bytes: int = MAX_BYTES,
) -> str:
    """The body of a 200 answer to ``GET url`` as text; ``EndpointError`` (no answer, not 200,
    too slow) or ``DataError`` (over ``max_bytes``, not UTF-8), one line naming ``url``."""
    request = urllib.request.Request(url, headers={"Accept": ACCEPT, **(headers or {})})
    deadline = perf_counter_ns() + int(timeout_s * 1e9)
    try:
        with _OPENER.open(request, timeout=timeout_s) as resp:
            if resp.status != 200:
                raise EndpointError(f"{url}: HTTP {resp.status}, expected 200")
            body = bytearray()
            while block := resp.read1(_READ_BLOCK):  # what has arrived, so the deadline holds
                body += block
                if len(body) > max_bytes:
                    raise DataError(f"{url}: answer over {max_bytes} bytes")
                if perf_counter_ns() > deadline:
                    raise EndpointError(f"{url}: answer took over {timeout_s:g} s")
    except urllib.error.HTTPError as exc:
        exc.close()
        raise EndpointError(f"{url}: HTTP {exc.code}, expected 200") from None
    except urllib.error.URLError as exc:
        raise EndpointError(f"{url}: {_reason(exc.reason)}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise EndpointError(f"{url}: {_reason(exc)}") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{url}: answer is not UTF-8 (byte {exc.start})") from None


def _reason(exc: object) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the timeout"
    text = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def metrics_url(base_url: str) -> str:
    """The endpoint's base URL without ``/v1``, plus ``/metrics``."""
    return base_url.rstrip("/").removesuffix("/v1") + "/metrics"


def check_url(url: str, what: str) -> str:
    """``url`` when it is an http(s) URL with a host (and a valid port); else a ``ConfigError``
    naming ``what`` (the option that gave it)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (a port out of range raises here)
    except ValueError as exc:
        raise ConfigError(f"{what} {url!r}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {url!r}: not an http(s) URL with a host")
    return url


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def key_headers(url: str, base_url: str, api_key: str | None) -> dict[str, str]:
    """``Authorization`` for ``url`` when it shares the endpoint's origin and there is a key."""
    if api_key is None or _origin(url) != _origin(base_url):
        return {}
    return {"Authorization": f"Bearer {api_key}"}


def probe_metrics(base_url: str, api_key: str | None = None) -> str | None:
    """The default metrics URL of the endpoint at ``base_url`` when it serves Prometheus text
    (``parse_metrics`` accepts it), else None."""
    url = metrics_url(base_url)
    try:
        parse_metrics(fetch(url, key_headers(url, base_url, api_key)))
    except InferauditError:
        return None
    return url


@dataclass(frozen=True)
class _Taken:
    t_abs_ns: int  # perf_counter_ns at the GET's start
    span_ns: int
    phase: Phase
    error: str | None
    parsed: BaseModel | None  # None when the sample failed

    def line(self, t_ns: int) -> bytes:
        """The sample's JSON line with ``t_ns`` as given: the envelope, then the parser's
        fields (none when the sample failed)."""
        data = ScrapeLine(
            t_ns=t_ns, span_ns=self.span_ns, phase=self.phase, ok=self.error is None,
            error=self.error,
        ).model_dump(mode="json")  # fmt: skip
        if self.parsed is not None:
            fields = self.parsed.model_dump(mode="json")
            assert not fields.keys() & data.keys(), "a parser's fields clash with the envelope"
            data.update(fields)
        return orjson.dumps(data) + b"\n"


@dataclass(frozen=True)
class ScrapeSummary:
    """What ``meta.json`` records of one side endpoint (``url`` None: nothing was scraped)."""

    url: str | None
    samples: int
    failed: int
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"url": self.url, "samples": self.samples, "failed": self.failed}
        if self.note is not None:
            out["note"] = self.note
        return out


class Scraper:
    """Scrape ``url`` before, during (every ``interval_s``) and after the load into ``path``
    (the module docstring has the steps, the clock and the failure rules)."""

    def __init__(
        self,
        url: str,
        path: Path,
        parse: Parse,
        interval_s: float = INTERVAL_S,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = TIMEOUT_S,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval_s must be a positive number, got {interval_s}")
        self.url = check_url(url, "scrape URL")
        self.path = path
        self.spool = path.with_name(path.name + SPOOL_SUFFIX)
        self._parse = parse
        self._interval_ns = int(interval_s * 1e9)
        self._headers = dict(headers or {})  # may hold the key: kept in memory only
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._taken: list[_Taken] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None
        self._spool_error: str | None = None
        self._t0 = 0

    # (1)
    def before(self) -> None:
        """One blocking sample, then the "during" thread starts."""
        assert self._thread is None, "before() is called once"
        self._take("before")
        self._t0 = self._taken[0].t_abs_ns  # the "during" ticks count from this GET's start
        self._thread = threading.Thread(target=self._run, name=f"scrape {self.url}", daemon=True)
        self._thread.start()

    # (2)
    def _run(self) -> None:
        try:
            tick = 1
            while True:
                wait_ns = self._t0 + tick * self._interval_ns - perf_counter_ns()
                if self._stop.wait(max(wait_ns, 0) / 1e9):
                    return
                self._take("during")
                elapsed = perf_counter_ns() - self._t0
                tick = max(tick + 1, elapsed // self._interval_ns + 1)
        except Exception as exc:  # a bug here: re-raised by after(), never lost
            self._crash = exc

    # (3)
    def after(self) -> None:
        """Stop the thread, then one blocking sample."""
        self._halt()
        if self._crash is not None:
            raise self._crash
        self._take("after")
        if self._spool_error is not None:
            raise StorageError(f"{self.spool}: cannot write: {self._spool_error}")

    # (4)
    def finish(self, epoch_ns: int) -> ScrapeSummary:
        """Write ``path`` on the epoch clock, remove the spool; returns the counts."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with self._lock:
            taken = list(self._taken)
        try:
            with open(tmp, "wb") as fh:
                for t in taken:
                    fh.write(t.line(t.t_abs_ns - epoch_ns))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(f"{self.path}: cannot write: {_reason(exc)}") from None
        with contextlib.suppress(FileNotFoundError):
            self.spool.unlink()
        return self.summary()

    def close(self) -> None:
        """Stop without writing ``path`` (the run failed): the spool is kept as it is."""
        self._halt()

    def summary(self) -> ScrapeSummary:
        with self._lock:
            failed = sum(t.error is not None for t in self._taken)
            return ScrapeSummary(self.url, len(self._taken), failed)

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _take(self, phase: Phase) -> None:
        start = perf_counter_ns()
        parsed: BaseModel | None = None
        error: str | None = None
        try:
            text = fetch(self.url, self._headers, timeout_s=self._timeout_s,
                         max_bytes=self._max_bytes)  # fmt: skip
            parsed = self._parse(text)
        except InferauditError as exc:
            error = exc.diagnostics().splitlines()[0] if str(exc) else type(exc).__name__
        taken = _Taken(start, perf_counter_ns() - start, phase, error, parsed)
        with self._lock:
            self._taken.append(taken)
            self._append_spool(taken)

    def _append_spool(self, taken: _Taken) -> None:
        if self._spool_error is not None:
            return
        try:
            with open(self.spool, "ab") as fh:
                fh.write(taken.line(taken.t_abs_ns))
        except OSError as exc:
            self._spool_error = _reason(exc)


ServerMetrics = str | Literal["auto"] | None


@dataclass
class Sidecars:
    """The run's scrapers (either may be absent) and what ``meta.json`` says of each."""

    server: Scraper | None
    telemetry: Scraper | None
    server_note: str | None = None

    def scrapers(self) -> list[Scraper]:
        return [s for s in (self.server, self.telemetry) if s is not None]

    def before(self) -> None:
        for s in self.scrapers():
            s.before()

    def after(self) -> None:
        for s in self.scrapers():
            s.after()

    def close(self) -> None:
        for s in self.scrapers():
            s.close()

    def finish(self, epoch_ns: int) -> dict[str, dict[str, object]]:
        """Write both files; the ``meta.json`` entries (``server_metrics``, ``telemetry``)."""
        out: dict[str, dict[str, object]] = {}
        if self.server is not None:
            out["server_metrics"] = self.server.finish(epoch_ns).to_json()
        else:
            out["server_metrics"] = ScrapeSummary(None, 0, 0, self.server_note).to_json()
        if self.telemetry is not None:
            out["telemetry"] = self.telemetry.finish(epoch_ns).to_json()
        return out


def check_options(server_metrics: ServerMetrics, telemetry: str | None) -> None:
    """The run's side URLs are usable ones (``ConfigError`` naming the option): checked before
    the run sends anything."""
    if server_metrics is not None and server_metrics != "auto":
        check_url(server_metrics, "--server-metrics")
    if telemetry is not None:
        check_url(telemetry, "--telemetry")


def start_sidecars(
    base_url: str,
    run_dir: Path,
    *,
    server_metrics: ServerMetrics,
    telemetry: str | None,
    telemetry_parse: Parse | None,
    api_key: str | None,
    server_file: str,
    telemetry_file: str,
    interval_s: float = INTERVAL_S,
) -> Sidecars:
    """Resolve the URLs ("auto": :func:`probe_metrics`; None: off) and take the "before"
    samples. The agent's answers are read by ``telemetry_parse``, by default
    ``measure.scrapes.telemetry_reading`` (an ``inferaudit agent``'s ``/samples``)."""
    note: str | None = None
    url: str | None
    if server_metrics == "auto":
        url = probe_metrics(base_url, api_key)
        if url is None:
            note = f"auto: no Prometheus text at {metrics_url(base_url)}"
    else:
        url = None if server_metrics is None else check_url(server_metrics, "--server-metrics")
        note = None if url is not None else "off"
    server = None
    if url is not None:
        server = Scraper(url, run_dir / server_file, reading, interval_s,
                         headers=key_headers(url, base_url, api_key))  # fmt: skip
    agent = None
    if telemetry is not None:
        check_url(telemetry, "--telemetry")
        parse = telemetry_reading if telemetry_parse is None else telemetry_parse
        agent = Scraper(telemetry, run_dir / telemetry_file, parse, interval_s)
    sidecars = Sidecars(server, agent, note)
    sidecars.before()
    return sidecars
