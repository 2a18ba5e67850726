"""The worker's wake-up for due requests (``measure/load/alarm.py``): never early, on time
without a busy wait, and the loop's timer where no signal handler can be set."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from time import perf_counter_ns

import pytest
import uvloop

from inferaudit.measure.load.alarm import Alarm

# due instants ahead of now, in ns: past, tiny, under and over the coarse sleep's threshold
AHEAD_NS = [-1_000, 0, 5_000, 80_000, 400_000, 900_000, 1_400_000, 2_000_000, 4_300_000]


async def _lateness(expect_armed: bool) -> tuple[list[int], float]:
    alarm = Alarm(asyncio.get_running_loop())
    assert alarm.armed is expect_armed
    late = []
    cpu = time.process_time()
    try:
        for ahead in AHEAD_NS * 3:
            due = perf_counter_ns() + ahead
            await alarm.until(due)
            late.append(perf_counter_ns() - due)
    finally:
        alarm.close()
    return late, time.process_time() - cpu


@pytest.mark.parametrize("loop_factory", [None, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_it_never_wakes_early_and_leaves_no_timer_behind(loop_factory: object) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:  # type: ignore[arg-type]
        late, _ = runner.run(_lateness(expect_armed=True))
    assert min(late) >= 0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)


def test_without_signals_it_waits_on_the_loops_timer() -> None:
    out: list[list[int]] = []
    thread = threading.Thread(target=lambda: out.append(uvloop.run(_lateness(False))[0]))
    thread.start()  # not the main thread: no signal handler can be set there
    thread.join(30)
    assert len(out) == 1 and min(out[0]) >= 0


def test_it_does_not_spin_the_loop_while_it_waits() -> None:
    """CPU time while waiting, against the wall time waited: a busy wait costs all of it.
    The waits here are of 0.3 ms each, which uvloop's timer (ms) can only spin through."""

    async def waits(use_alarm: bool) -> float:
        alarm = Alarm(asyncio.get_running_loop())
        if not use_alarm:
            alarm.close()  # armed False: the loop's timer
        cpu, wall = time.process_time(), perf_counter_ns()
        for _ in range(300):
            await alarm.until(perf_counter_ns() + 300_000)
        spent = (time.process_time() - cpu) / ((perf_counter_ns() - wall) / 1e9)
        alarm.close()
        return spent

    busy, quiet = uvloop.run(waits(False)), uvloop.run(waits(True))
    print(f"CPU s per s waited: loop's timer {busy:.2f}, alarm {quiet:.2f}")
    assert quiet < busy / 2  # idle machine: 1.00 against 0.13; two CPU burners: 0.50 against 0.10
