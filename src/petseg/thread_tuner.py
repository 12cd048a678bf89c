"""CPU training on a shared machine: pick the torch thread count by timing the steps themselves.

torch uses one thread per core. When other CPU-bound processes run on a small machine (a second run,
an evaluation, a test suite), the thread that loses its core holds up every parallel region of the
step, while one thread keeps its own pace (benchmarks/README.md: busy_machine.py, crowded_machine.py).
No fixed setting is right for both cases, so ``trainer.threads: auto`` measures: every ``period``
steps, and at once when the steps get much slower than the best seen, it times ``probe`` steps at the
other thread count and keeps the faster one. On a quiet machine this costs the probe steps (~1-2 %).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("petseg.threads")

FEWER_MARGIN = 1.0  # switch to fewer threads when they are no slower
MORE_MARGIN = 0.85  # and back to more only when those are at least 15 % faster (a tie is noise)


class ThreadTuner:
    """Call ``after_step(seconds)`` after every train step; it calls ``set_threads(n)`` when it probes
    or switches. ``choices``: the thread counts to choose from (e.g. (cores, 1)). ``others``: how many
    other processes' threads are runnable now (``others_running``): below all cores, a window of steps
    in which mostly none were probes all cores at once, instead of waiting for the period (a step at one
    thread takes as long on a busy machine as on a free one, so its time cannot tell)."""

    def __init__(
        self,
        choices: tuple[int, ...],
        set_threads: Callable[[int], None],
        period: int = 200,
        probe: int = 3,
        window: int = 5,
        slowdown: float = 1.5,
        start: int | None = None,
        others: Callable[[], float] | None = None,
    ) -> None:
        self.choices = tuple(dict.fromkeys(choices))
        self.set_threads = set_threads
        self.period, self.probe, self.slowdown = period, probe, slowdown
        self.current = self.choices[0] if start is None else start
        if self.current != self.choices[0]:
            set_threads(self.current)
        self.recent: deque[float] = deque(maxlen=window)
        self.others = others
        self.others_seen: deque[float] = deque(maxlen=window)
        self.reset()

    def reset(self) -> None:
        """Forget the step times seen (the work per step changed, e.g. a new training size) and probe
        again once the next window is timed. Keeps the current thread count."""
        if getattr(self, "probing", None) is not None:
            self.set_threads(self.current)  # a probe cut short
        self.recent.clear()
        self.others_seen.clear()
        self.best: dict[int, float] = {}
        # Probe once as soon as the first window is timed: a run started on an already busy machine
        # would otherwise take that slow pace as its best and wait a whole period.
        self.steps_since_probe = self.period
        self.probing: int | None = None  # the thread count being probed
        self.probe_times: list[float] = []

    def after_step(self, seconds: float) -> None:
        if len(self.choices) < 2:
            return
        if self.probing is not None:
            self.probe_times.append(seconds)
            if len(self.probe_times) >= self.probe:
                self._decide()
            return
        self.recent.append(seconds)
        self.steps_since_probe += 1
        if len(self.recent) < self.recent.maxlen:
            return
        median = statistics.median(self.recent)
        self.best[self.current] = min(self.best.get(self.current, median), median)
        slowed = median > self.slowdown * self.best[self.current]
        if self.steps_since_probe >= self.period or slowed or self._machine_freed():
            self._start_probe()

    def _machine_freed(self) -> bool:
        if self.others is None or self.current == max(self.choices):
            return False
        self.others_seen.append(self.others())
        if len(self.others_seen) < self.others_seen.maxlen or self.steps_since_probe < len(self.others_seen):
            return False
        return statistics.median(self.others_seen) == 0

    def _start_probe(self) -> None:
        self.probing = next(c for c in self.choices if c != self.current)
        self.probe_times = []
        self.set_threads(self.probing)

    def _decide(self) -> None:
        probed = statistics.median(self.probe_times[1:] or self.probe_times)  # the first may warm up
        mine = statistics.median(self.recent)
        # Fewer threads win ties: on a crowded machine they hold their pace while more threads wait on
        # each other (benchmarks/crowded_machine.py), and they leave the neighbours a core.
        if probed <= (FEWER_MARGIN if self.probing < self.current else MORE_MARGIN) * mine:
            log.info(
                "training threads %d -> %d (%.2f s vs %.2f s per step: the machine is %s)",
                self.current,
                self.probing,
                mine,
                probed,
                "busy" if self.probing < self.current else "free again",
            )
            self.current = self.probing
            self.best.pop(self.current, None)  # conditions changed: its old best no longer holds
        self.set_threads(self.current)
        self.probing = None
        self.recent.clear()
        self.others_seen.clear()
        self.steps_since_probe = 0


def tuner_for(trainer: Any, device: torch.device, distributed: bool) -> ThreadTuner | None:
    """The tuner ``trainer.threads: auto`` asks for on this run, or None: only for CPU training in one
    process (torchrun's processes already split the cores), with more than one core, and not under
    trainer.deterministic (results may depend on the thread count)."""
    if trainer.threads != "auto" or device.type != "cpu" or distributed:
        return None
    cores = torch.get_num_threads()
    if trainer.deterministic or cores < 2:
        return None
    # On a machine already crowded at the start, all threads would lose every parallel region to the
    # other processes: start at one and let the first probe decide.
    busy = others_running() >= max(1, cores // 2)
    return ThreadTuner(
        (cores, 1),
        torch.set_num_threads,
        start=1 if busy else cores,
        others=lambda: others_running(samples=1, interval_s=0.0),
    )


def others_running(samples: int = 5, interval_s: float = 0.01) -> float:
    """Runnable threads of other processes now: /proc/loadavg's running count less the reader, the
    median of a few samples (one is noisy); 0 where /proc is not there."""
    counts = []
    for _ in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        counts.append(running - 1)
        time.sleep(interval_s)
    return float(statistics.median(counts))
