"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM become a flag the trainer reads after each step.

The step in flight completes, the trainer saves last.pth and exits with 128 + the signal number; a
second signal stops at once without saving. Loader workers ignore both signals, so a Ctrl-C cannot kill
the worker that holds the batch the main process still needs.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("petseg.train")


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was saved. ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ForcedStop(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once, unsaved (last.pth keeps the previous save)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"second {signal.Signals(signum).name}: stopped at once, without saving")
        self.exit_code = 128 + signum


class StopSignals:
    """Turn SIGINT/SIGTERM into a flag checked after each step, so the step in flight completes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._first_at = 0.0
        # Seconds after the first signal in which another one counts as the same request. Under
        # torchrun a Ctrl-C reaches each worker twice: from the terminal, then forwarded by the agent.
        self.debounce_s = 0.0

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # a second signal: the user does not want to wait for the save
            if time.monotonic() - self._first_at < self.debounce_s:
                return
            raise ForcedStop(signum)
        self.signum = signum
        self._first_at = time.monotonic()
        log.warning(
            "%s received: finishing the current step, then saving last.pth (send it again to stop at "
            "once, unsaved)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): no graceful stop
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _worker_init(worker_id: int, inner: Callable[[int], None] | None) -> None:
    # Ctrl-C reaches every process of the terminal's group, a scheduler's SIGTERM often too: a loader
    # worker that died of it would break the batch the main process still needs to finish its step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if inner is not None:
        inner(worker_id)


def shield_workers(loader: torch.utils.data.DataLoader) -> None:
    """Let the loader's worker processes ignore SIGINT/SIGTERM; the main process handles them."""
    if loader.num_workers > 0:
        # A partial of a module-level function: picklable for the spawn start method too.
        loader.worker_init_fn = functools.partial(_worker_init, inner=loader.worker_init_fn)
