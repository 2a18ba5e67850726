"""Chunk parsing: the client's SSE reader with content templates against parsing every chunk.

``read_stream`` (the hot loop of every measured request) reads the content of a chunk that
repeats an earlier chunk's bytes but for its content through that chunk's template
(``measure.load.template``), and parses the others with ``orjson``. This measures what that
saves, in one process, with no socket: the same bodies fed to ``read_stream`` as the reads a
socket would give, ``templates=True`` against ``templates=False``, interleaved ``--pairs``
times so a noisy neighbour moves both. Bodies of 128 content chunks (+ finish, usage,
``[DONE]``), chat and completions:

* ``one read``: the whole body in one read (nginx's fixed body in ``client_capacity.py``);
* ``a chunk a read``: one event per read (a real server streaming token by token).

Prints CPU microseconds per request of each, their ratio per pair, and the median ratio.

Run by hand:  .venv/bin/python bench/chunk_parse.py [--requests N] [--pairs P]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from client_capacity import sse_events
from inferaudit.measure.load.deadline import Timeouts, Watch
from inferaudit.measure.load.stream import ContentCap, Stream, read_stream

CHUNKS = 128


class Reads:
    """The ``readany`` side of aiohttp's StreamReader over fixed reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads
        self.at = 0

    async def readany(self) -> bytes:
        if self.at == len(self.reads):
            return b""
        self.at += 1
        return self.reads[self.at - 1]


def bodies(chat: bool) -> dict[str, list[bytes]]:
    content, finish, usage = sse_events(chat)
    events = [content.encode()] * CHUNKS + [finish.encode(), usage.encode(), b"data: [DONE]\n\n"]
    return {"one read": [b"".join(events)], "a chunk a read": events}


async def cpu_us(reads: list[bytes], chat: bool, templates: bool, n: int) -> float:
    cap = ContentCap.of(CHUNKS)
    start = time.process_time()
    for _ in range(n):
        st = Stream(status=200)
        watch = Watch(Timeouts(), 0, 0)
        await read_stream(Reads(reads), chat, st, watch, 0, None, cap, templates=templates)  # type: ignore[arg-type]
        watch.close()
        assert st.error_class is None and len(st.parts) == CHUNKS
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    for chat in (False, True):
        for shape, reads in bodies(chat).items():
            ratios = []
            for _ in range(args.pairs):
                on = asyncio.run(cpu_us(reads, chat, True, args.requests))
                off = asyncio.run(cpu_us(reads, chat, False, args.requests))
                ratios.append(on / off)
                print(
                    f"{'chat' if chat else 'completions':<12} {shape:<15} templates "
                    f"{on:6.1f} us/request, every chunk parsed {off:6.1f}: {on / off:.2f}x"
                )
            print(
                f"  median {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
