"""ThreadTuner: keeps all cores on a quiet machine, drops to 1 thread when a busy machine makes the
steps slower, and returns when the machine is free again (simulated step times)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from petseg.checks import check_train_config
from petseg.errors import PetsegError
from petseg.thread_tuner import ThreadTuner, tuner_for


class Machine:
    """Step times of the busy_machine.py measurement: 2 threads 0.6 s alone, 2.1 s busy; 1 thread 1.2 s."""

    def __init__(self) -> None:
        self.threads = 2
        self.busy = False
        self.history: list[int] = []

    def set_threads(self, n: int) -> None:
        self.threads = n

    def step_time(self) -> float:
        self.history.append(self.threads)
        if self.threads == 1:
            return 1.2
        return 2.1 if self.busy else 0.6


def run(tuner: ThreadTuner, machine: Machine, steps: int) -> None:
    for _ in range(steps):
        tuner.after_step(machine.step_time())


def test_quiet_machine_keeps_all_cores_and_probes_rarely() -> None:
    machine = Machine()
    tuner = ThreadTuner((2, 1), machine.set_threads, period=200, probe=3)
    run(tuner, machine, 1000)
    assert tuner.current == 2 and machine.threads == 2
    assert machine.history.count(1) <= 6 * 3  # a 3-step probe at the start and per ~200 steps


def test_busy_machine_switches_to_one_thread_within_a_few_steps_and_back_when_free() -> None:
    machine = Machine()
    tuner = ThreadTuner((2, 1), machine.set_threads, period=200, probe=3)
    run(tuner, machine, 50)
    machine.busy = True
    run(tuner, machine, 15)
    assert tuner.current == 1 and machine.threads == 1
    run(tuner, machine, 300)
    assert tuner.current == 1  # probes of 2 threads stay slower while busy
    machine.busy = False
    run(tuner, machine, 250)
    assert tuner.current == 2 and machine.threads == 2


def test_one_choice_never_changes_anything() -> None:
    machine = Machine()
    tuner = ThreadTuner((2, 2), machine.set_threads)
    machine.busy = True
    run(tuner, machine, 500)
    assert set(machine.history) == {2}


def test_threads_auto_tunes_cpu_training_in_one_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cpu = torch.device("cpu")
    auto = OmegaConf.create({"threads": "auto", "deterministic": False})
    tuner = tuner_for(auto, cpu, distributed=False)
    assert tuner is not None and tuner.choices == (2, 1)
    assert tuner_for(auto, cpu, distributed=True) is None  # torchrun's processes already share the cores
    assert tuner_for(OmegaConf.merge(auto, {"deterministic": True}), cpu, False) is None
    assert tuner_for(OmegaConf.merge(auto, {"threads": 2}), cpu, False) is None
    assert tuner_for(OmegaConf.merge(auto, {"threads": None}), cpu, False) is None


def _train_cfg(*overrides: str):
    from hydra import compose, initialize_config_dir

    from petseg.paths import CONFIG_DIR

    sample = Path(__file__).resolve().parent / "data" / "oxford-iiit-pet"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"data.root={sample}", "data.image_size=32", *overrides])


def test_threads_setting_is_checked() -> None:
    assert _train_cfg().trainer.threads == "auto"  # the default
    check_train_config(_train_cfg("trainer.threads=1"))
    check_train_config(_train_cfg("trainer.threads=auto"))
    with pytest.raises(PetsegError, match="trainer.threads"):
        check_train_config(_train_cfg("trainer.threads=fast"))


def test_a_run_started_on_a_busy_machine_switches_after_its_first_window() -> None:
    machine = Machine()
    machine.busy = True
    tuner = ThreadTuner((2, 1), machine.set_threads, period=200, probe=3)
    run(tuner, machine, 10)
    assert tuner.current == 1 and machine.threads == 1


def test_fewer_threads_win_a_tie_and_more_threads_must_be_clearly_faster() -> None:
    """A step as fast at 1 thread as at 2 (a small size): 1 thread, which holds its pace when the
    machine gets crowded; back to 2 only for a clear gain (10 % is not enough)."""
    times = {2: 0.50, 1: 0.50}
    threads = [2]
    tuner = ThreadTuner((2, 1), lambda n: threads.append(n), period=20, probe=3)

    def steps(n: int) -> None:
        for _ in range(n):
            tuner.after_step(times[threads[-1]])

    steps(10)
    assert tuner.current == 1
    times[2] = 0.45  # 2 threads now 10 % faster: not worth leaving 1
    steps(100)
    assert tuner.current == 1
    times[2] = 0.30
    steps(100)
    assert tuner.current == 2


def test_a_machine_crowded_at_the_start_starts_at_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from petseg import thread_tuner

    set_to: list[int] = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    auto = OmegaConf.create({"threads": "auto", "deterministic": False})
    monkeypatch.setattr(thread_tuner, "others_running", lambda: 2.0)
    busy = tuner_for(auto, torch.device("cpu"), distributed=False)
    assert busy is not None and busy.current == 1 and set_to == [1]
    monkeypatch.setattr(thread_tuner, "others_running", lambda: 0.0)
    quiet = tuner_for(auto, torch.device("cpu"), distributed=False)
    assert quiet is not None and quiet.current == 2 and set_to == [1]


@pytest.mark.skipif(not Path("/proc/loadavg").is_file(), reason="Linux's /proc/loadavg")
def test_others_running_sees_a_busy_process() -> None:
    from petseg.thread_tuner import others_running

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert others_running() >= 1.0
    finally:
        spinner.kill()
        spinner.wait()


def test_at_one_thread_a_freed_machine_is_probed_at_once_not_after_the_period() -> None:
    """At 1 thread a step takes as long busy as free (Machine: 1.2 s): the count of other runnable
    threads tells the tuner the machine is free, and it returns to 2 threads within a few steps."""
    machine = Machine()
    tuner = ThreadTuner((2, 1), machine.set_threads, period=200, probe=3, others=lambda: 2.0 * machine.busy)
    machine.busy = True
    run(tuner, machine, 30)
    assert tuner.current == 1
    machine.busy = False
    run(tuner, machine, 15)  # a window of quiet samples, then a 3-step probe
    assert tuner.current == 2 and machine.threads == 2
