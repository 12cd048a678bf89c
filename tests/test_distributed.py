"""Multi-process training (torchrun, DistributedDataParallel over gloo on two CPU processes), the
TensorBoard HParams record, and a diverging job inside a sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from curves import read_scalars
from oxford_pet import build_dataset
from petseg.checkpoint import load_checkpoint, model_from_checkpoint
from petseg.evaluation import evaluate, interleave_shards
from petseg.loaders import build_dataloader
from petseg.runtime import setup_runtime
from petseg.sampler import EpochSampler, ShardSampler
from test_e2e import ROOT, run, tiny_overrides

pytestmark = pytest.mark.slow


def torchrun(*args: str, nproc: int = 2, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free local port: tests may run beside other jobs
        f"--nproc_per_node={nproc}",
        str(ROOT / "src" / "train.py"),
        *args,
    ]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    if result.returncode != 0:
        raise AssertionError(f"torchrun exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("ddp")
    run_dir = tmp / "run"
    # cwd: an empty folder, so a file written by a rank other than 0 (its run dir is '.') would show.
    work = tmp / "cwd"
    work.mkdir()
    # A low threshold: the tiny model's logits sit near 0, so each image gets a different, non-zero
    # Dice (at 0.5 both valid images score 0 and a rank-local mean would look right by accident).
    result = torchrun(*tiny_overrides(tmp), "trainer.threshold=0.2", f"hydra.run.dir={run_dir}", cwd=work)
    return run_dir, result


def test_shards_partition_every_epoch_and_split() -> None:
    for size, world in ((18, 2), (19, 3), (2, 2), (5, 4)):
        train = [EpochSampler(size, seed=3, rank=r, world_size=world) for r in range(world)]
        for s in train:
            s.set_epoch(1)
        drawn = [[i for i, _ in s] for s in train]
        assert len({len(d) for d in drawn}) == 1  # lockstep: every rank the same number of steps
        flat = [i for d in drawn for i in d]
        assert len(flat) == len(set(flat)) == size // world * world
        evals = [list(ShardSampler(size, r, world)) for r in range(world)]
        assert interleave_shards(evals) == list(range(size))  # every image once, in list order


def test_torchrun_trains_one_run_written_by_rank_zero_only(ddp_run) -> None:
    run_dir, result = ddp_run
    assert "2 processes (DDP), global batch 8" in result.stdout + result.stderr
    assert {p.name for p in run_dir.parent.iterdir()} == {"run", "cwd", "saved", "cache"}  # one run dir
    assert not any((run_dir.parent / "cwd").iterdir())  # rank 1 created nothing
    log_lines = (run_dir / "train.log").read_text().splitlines()
    assert sum("epoch 1/2" in line for line in log_lines) == 1  # one writer
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    last = load_checkpoint(run_dir / "last.pth")
    # 18 train images, 9 per rank, batch 4 per rank: 2 steps per epoch (one process would take 4).
    assert last["progress"]["global_step"] == 2 * 2
    assert last["world_size"] == 2
    assert [step for step, _ in read_scalars(run_dir, ("val/dice",))["val/dice"]] == [1, 2]


def test_distributed_validation_equals_one_process(ddp_run) -> None:
    """The val Dice/loss the two ranks logged (each scored half the split, sums all-reduced) equal a
    single-process evaluation of the weights rank 0 saved."""
    run_dir, _ = ddp_run
    ckpt = load_checkpoint(run_dir / "last.pth")
    cfg = OmegaConf.create(ckpt["config"])
    runtime = setup_runtime(OmegaConf.merge(cfg.trainer, {"device": "cpu"}))
    model = runtime.prepare(model_from_checkpoint(ckpt))
    loader = build_dataloader(build_dataset(cfg.data, cfg.aug, "valid"), cfg.data, train=False)
    from petseg.build import build_loss
    from petseg.model_input import ModelInput

    single = evaluate(
        model,
        loader,
        ModelInput.of(cfg.data, runtime),
        loss_fn=build_loss(cfg.loss),
        threshold=cfg.trainer.threshold,
        progress=False,
    )
    logged = ckpt["history"][-1]
    assert single["count"] == 2
    scores = [row["dice_256"] for row in single["per_image"]]
    assert 0 < min(scores) < max(scores)  # the two ranks' halves differ: a rank-local mean would not match
    assert logged["val/dice"] == pytest.approx(single["dice"], abs=1e-6)
    assert logged["val/dice_pooled"] == pytest.approx(single["dice_pooled"], abs=1e-6)
    assert logged["val/loss"] == pytest.approx(single["loss"], abs=1e-6)


def test_hparams_tab_holds_settings_and_final_metrics(ddp_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, _ = ddp_run
    (events,) = (run_dir / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(
        content
    )
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    last = load_checkpoint(run_dir / "last.pth")
    assert hparams["optim.lr"].number_value == pytest.approx(last["config"]["optim"]["lr"])
    assert hparams["model.name"].string_value == "unet"
    # The option chosen in each group leads; the _target_ plumbing is not a column.
    assert hparams["optim"].string_value == "adamw" and hparams["sched"].string_value == "cosine"
    assert hparams["loss"].string_value == "bce_dice" and "optim._target_" not in hparams
    assert hparams["data.image_size"].number_value == 32
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert "hparams/best_val_dice" in metric_tags
    best = read_scalars(run_dir, ("hparams/best_val_dice",))["hparams/best_val_dice"]
    assert best == [(2, pytest.approx(last["best"]["metric"], abs=1e-6))]


def test_a_diverging_job_does_not_end_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    overrides = tiny_overrides(tmp_path, epochs=1)
    # lr 1e20 without clipping: NaN loss at the second step (tests/test_user_errors.py).
    result = run(
        "train.py",
        "-m",
        *overrides,
        "trainer.grad_clip=null",
        "optim.lr=1e20,1e-3",
        f"hydra.sweep.dir={sweep}",
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2
    assert not (jobs[0] / "best.pth").exists() and (jobs[1] / "best.pth").is_file()
    assert "job 0 diverged, the sweep goes on (its score: 0.0000)" in result.stdout + result.stderr


def test_an_optuna_search_survives_diverging_trials(tmp_path: Path) -> None:
    """Optuna's sweeper cannot record a NaN trial (it would stop the whole search): a diverged trial
    scores the best val Dice it reached before, here 0 as no epoch finished."""
    import yaml

    sweep = tmp_path / "optuna"
    overrides = tiny_overrides(tmp_path, epochs=1)
    run(
        "train.py",
        "hparams_search=optuna",
        *overrides,
        "trainer.grad_clip=null",
        'hydra.sweeper.params={optim.lr:"choice(1e20)",data.batch_size:"choice(4)"}',
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"] == 0.0
    assert len([p for p in sweep.iterdir() if (p / ".hydra").is_dir()]) == 2


def test_sigterm_to_torchrun_saves_once_and_stops_every_rank(tmp_path: Path) -> None:
    """The agent forwards SIGTERM to both ranks; they agree on the step, rank 0 saves, nobody hangs."""
    import signal
    import time

    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tmp_path, epochs=100000)  # stopped by the signal long before
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(ROOT / "src" / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "best.pth").is_file():  # training is under way on both ranks
            assert proc.poll() is None and time.monotonic() < deadline, "torchrun did not start training"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert output.count("stopped by SIGTERM") == 1, output[-3000:]  # rank 0 reports, rank 1 is quiet
    ckpt = load_checkpoint(run_dir / "last.pth")
    assert f"stopped by SIGTERM {'at' if ckpt['progress']['step'] else 'after'} epoch" in output
    assert ckpt["world_size"] == 2
