"""One sampling round of the agent: run every vendor tool found, parse, and gather the samples.

The tools are a closed set (``Tool``), each with the exact command the agent runs and its
parser. A tool is used when ``shutil.which`` finds it on ``PATH``; it runs with a timeout, and
its devices are left out of the round — with the reason in its ``ToolRun.error`` — when it
exits non-zero, times out, prints non-UTF-8 or prints what its parser refuses. A DCGM exporter
is read over HTTP when its URL is given. Where two sources report the same device, the first
(in ``Tool`` order, the exporter last) is kept and the other's copy is named in
``duplicates_dropped``. No tool found: the round has no samples and says why in ``reason``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import assert_never

import aiohttp

from inferaudit.errors import DataError
from inferaudit.measure.telemetry.agent_wire import AgentSnapshot, ToolRun
from inferaudit.measure.telemetry.ascend import NPU_SMI_COMMAND, parse_npu_smi_info
from inferaudit.measure.telemetry.model import DeviceSample
from inferaudit.measure.telemetry.nvidia import (
    DCGM_EXPORTER,
    NVIDIA_SMI_COMMAND,
    parse_dcgm_exporter,
    parse_nvidia_smi_csv,
)

_MAX_OUTPUT = 1024 * 1024


class Tool(StrEnum):
    """The vendor tools the agent runs (see the package docstring for those it cannot)."""

    NVIDIA_SMI = "nvidia-smi"
    NPU_SMI = "npu-smi"


def command(tool: Tool) -> tuple[str, ...]:
    """The exact command line the agent runs for ``tool``."""
    match tool:
        case Tool.NVIDIA_SMI:
            return NVIDIA_SMI_COMMAND
        case Tool.NPU_SMI:
            return NPU_SMI_COMMAND
        case _:
            assert_never(tool)


def parse(tool: Tool, text: str) -> list[DeviceSample]:
    """``tool``'s output as samples (``DataError`` when it does not parse)."""
    match tool:
        case Tool.NVIDIA_SMI:
            return parse_nvidia_smi_csv(text)
        case Tool.NPU_SMI:
            return parse_npu_smi_info(text)
        case _:
            assert_never(tool)


@dataclass(frozen=True)
class FoundTool:
    tool: Tool
    path: str


def find_tools(search_path: str | None = None) -> tuple[FoundTool, ...]:
    """The tools on ``search_path`` (default: ``$PATH``), in ``Tool`` order."""
    found = []
    for tool in Tool:
        path = shutil.which(tool.value, path=search_path)
        if path is not None:
            found.append(FoundTool(tool, path))
    return tuple(found)


def no_tool_reason() -> str:
    names = ", ".join(t.value for t in Tool)
    return f"no accelerator tool found on PATH (looked for {names}) and no --dcgm-url given"


async def run_tool(found: FoundTool, timeout_s: float) -> tuple[list[DeviceSample], ToolRun]:
    """Run one tool once; its samples, and how the run went."""
    argv = (found.path, *command(found.tool)[1:])

    def failed(error: str) -> tuple[list[DeviceSample], ToolRun]:
        return [], ToolRun(tool=found.tool.value, path=found.path, error=error)

    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout ends its children too
        )
    except OSError as exc:
        return failed(f"cannot run {found.path}: {exc.strerror or exc}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.communicate()
        return failed(f"no answer within {timeout_s:g} s")
    if proc.returncode != 0:
        said = (err or out).decode("utf-8", "replace").strip().splitlines()[:1]
        return failed(f"exit status {proc.returncode}" + (f": {said[0]}" if said else ""))
    if len(out) > _MAX_OUTPUT:
        return failed(f"printed {len(out)} bytes, more than {_MAX_OUTPUT}")
    try:
        samples = parse(found.tool, out.decode("utf-8"))
    except UnicodeDecodeError:
        return failed("its output is not UTF-8")
    except DataError as exc:
        return failed(exc.diagnostics())
    return samples, ToolRun(tool=found.tool.value, path=found.path)


async def scrape_dcgm(
    session: aiohttp.ClientSession, url: str, timeout_s: float
) -> tuple[list[DeviceSample], ToolRun]:
    """Read a dcgm-exporter's ``/metrics`` once."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            body = await resp.content.read(_MAX_OUTPUT + 1)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return [], ToolRun(tool=DCGM_EXPORTER, path=url, error=f"{type(exc).__name__}: {exc}")
    error: str | None = None
    samples: list[DeviceSample] = []
    if status != 200:
        error = f"HTTP {status}"
    elif len(body) > _MAX_OUTPUT:
        error = f"more than {_MAX_OUTPUT} bytes"
    else:
        try:
            samples = parse_dcgm_exporter(body.decode("utf-8"))
        except UnicodeDecodeError:
            error = "its answer is not UTF-8"
        except DataError as exc:
            error = exc.diagnostics()
    return samples, ToolRun(tool=DCGM_EXPORTER, path=url, error=error)


class Sampler:
    """Runs the rounds; ``latest`` is the last finished round (``None`` before the first)."""

    def __init__(
        self,
        tools: tuple[FoundTool, ...],
        timeout_s: float,
        dcgm_url: str | None = None,
    ) -> None:
        assert timeout_s > 0, "the CLI checks the timeout"
        self.tools = tools
        self.timeout_s = timeout_s
        self.dcgm_url = dcgm_url
        self.sequence = 0
        self.latest: AgentSnapshot | None = None

    async def round(self, session: aiohttp.ClientSession | None) -> AgentSnapshot:
        jobs = [run_tool(found, self.timeout_s) for found in self.tools]
        if self.dcgm_url is not None:
            assert session is not None, "a DCGM URL needs a client session"
            jobs.append(scrape_dcgm(session, self.dcgm_url, self.timeout_s))
        results = await asyncio.gather(*jobs)
        samples: list[DeviceSample] = []
        runs: list[ToolRun] = []
        seen: set[str] = set()
        for got, run in results:
            dropped = tuple(s.device_id for s in got if s.device_id in seen)
            samples.extend(s for s in got if s.device_id not in seen)
            seen.update(s.device_id for s in got)
            runs.append(run.model_copy(update={"duplicates_dropped": dropped}) if dropped else run)
        self.sequence += 1
        reason = None if results else no_tool_reason()
        if results and not samples:
            reason = "no source reported a device this round (see tools)"
        self.latest = AgentSnapshot(
            sequence=self.sequence,
            sampled_at_unix_ns=time.time_ns(),
            samples=tuple(samples),
            tools=tuple(runs),
            reason=reason,
        )
        return self.latest
