"""setup_runtime: what the trainer's 'auto' settings become on this (CPU) machine, and the
errors for values that would otherwise be misread."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from helpers import ROOT
from petseg import runtime
from petseg.distributed import DistInfo
from petseg.errors import PetsegError
from petseg.runtime import Runtime, resolve_device, setup_runtime


def trainer_cfg(**overrides: object) -> DictConfig:
    cfg = OmegaConf.load(ROOT / "configs" / "trainer" / "default.yaml")
    cfg.device = "cpu"
    return OmegaConf.merge(cfg, overrides)


def test_defaults_resolve_to_the_measured_cpu_choices() -> None:
    rt = setup_runtime(trainer_cfg())
    assert rt.device == torch.device("cpu")
    fast_bf16 = runtime.cpu_bf16_units() is not None
    # bf16 autocast + channels_last where the CPU has AMX or AVX512-BF16, fp32 elsewhere (emulated
    # bf16), in channels_last with AVX-512 and in the default layout with AVX2 only
    assert rt.amp_dtype is (torch.bfloat16 if fast_bf16 else None)
    assert rt.channels_last is (fast_bf16 or runtime.cpu_has_avx512())
    assert rt.compile is False  # opt-in: minutes of compile time
    assert rt.why.startswith("auto: CPU")


@pytest.mark.parametrize(
    ("units", "avx512", "amp", "layout"),
    [
        ("AMX", True, torch.bfloat16, True),
        ("AVX512-BF16", True, torch.bfloat16, True),
        (None, True, None, True),
        (None, False, None, False),
    ],
)
def test_auto_on_cpu_follows_the_bf16_units_and_vector_width(
    monkeypatch: pytest.MonkeyPatch, units, avx512, amp, layout
) -> None:
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda: units)
    monkeypatch.setattr(runtime, "cpu_has_avx512", lambda: avx512)
    rt = setup_runtime(trainer_cfg())
    assert (rt.amp_dtype, rt.channels_last) == (amp, layout)
    reason = units or ("with AVX-512" if avx512 else "AVX2 only")
    assert reason in rt.why and rt.describe()["amp"] == ("bf16" if amp else "fp32")
    # An explicit value always wins, and the reason says so.
    rt = setup_runtime(trainer_cfg(amp="off", channels_last=not layout))
    assert (rt.amp_dtype, rt.channels_last) == (None, not layout)
    assert rt.why == f"amp=off as set; channels_last={not layout} as set"


def test_explicit_settings_are_kept() -> None:
    rt = setup_runtime(trainer_cfg(amp="bf16", channels_last=True, compile=True, retain_host_memory=False))
    assert (rt.device, rt.amp_dtype, rt.channels_last, rt.compile, rt.retain_memory) == (
        torch.device("cpu"),
        torch.bfloat16,
        True,
        True,
        False,
    )
    assert setup_runtime(trainer_cfg(amp="off", channels_last=False)).channels_last is False


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("channels_last", "flase", "channels_last='flase' is not one of auto, true, false"),
        ("compile", "auto", "compile='auto' is not one of true, false"),
        ("compile", "yes", "compile='yes'"),
        ("amp", "fp8", "trainer.amp=fp8"),
        ("cudnn_benchmark", "fast", "cudnn_benchmark='fast' is not one of auto, true, false"),
    ],
)
def test_misspelt_values_are_user_errors(key: str, value: str, message: str) -> None:
    with pytest.raises(PetsegError, match=message):
        setup_runtime(trainer_cfg(**{key: value}))


def test_missing_keys_mean_the_defaults() -> None:
    # Trainer configs saved in older checkpoints may lack the newer keys: petseg.upgrade fills them
    # from today's YAML, the one place defaults live.
    from petseg.upgrade import upgrade_config

    rt = setup_runtime(upgrade_config({"model": {"name": "unet"}, "trainer": {"device": "cpu"}}).trainer)
    assert (rt.amp_dtype, rt.channels_last) == (
        setup_runtime(trainer_cfg()).amp_dtype,
        rt.channels_last,
    )
    assert rt.channels_last is setup_runtime(trainer_cfg()).channels_last and not rt.compile


def test_cuda_request_without_cuda_is_a_user_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(PetsegError, match="CUDA is not available"):
        setup_runtime(trainer_cfg(device="cuda"))


def test_channels_last_runtime_converts_the_model() -> None:
    rt = Runtime(torch.device("cpu"), channels_last=True)
    model = rt.prepare(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    plain = Runtime(torch.device("cpu")).prepare(torch.nn.Conv2d(3, 4, 3))
    assert plain.weight.is_contiguous()


def test_compile_model_wraps_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.nn.Module] = []
    # Stand-in for torch.compile: importing dynamo alone takes seconds, and what matters is the call.
    monkeypatch.setattr(torch, "compile", lambda m: calls.append(m) or torch.nn.Sequential(m))
    model = torch.nn.Linear(2, 2)
    assert Runtime(torch.device("cpu")).compile_model(model) is model and not calls
    compiled = Runtime(torch.device("cpu"), compile=True).compile_model(model)
    assert calls == [model] and compiled is not model
    assert set(compiled.parameters()) == set(model.parameters())


_FAULTS_SCRIPT = """
import resource, sys
import torch
sys.path.insert(0, {src!r})
from petseg.runtime import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
for _ in range(10):  # warm-up: the heap grows and settles (a training run's first steps)
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # allocate, touch and free 64 MiB
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow  # a fresh process per mode
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_retained_memory_stops_refaulting_freed_blocks() -> None:
    """What trainer.retain_host_memory buys: a freed big block is reused instead of being unmapped and
    faulted in (zeroed) again at the next step. Each mode runs in a fresh process: the tuning is
    process-wide and one-way."""
    script = _FAULTS_SCRIPT.format(src=str(ROOT / "src"))

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    plain, retained = faults("plain"), faults("retain")
    assert plain > 10 * 16384 * 0.9  # 10 x 64 MiB of 4 KiB pages, faulted in again every time
    assert retained < plain / 20


def test_retain_host_memory_defaults_to_cpu_only() -> None:
    assert setup_runtime(trainer_cfg()).retain_memory is sys.platform.startswith("linux")
    assert setup_runtime(trainer_cfg(retain_host_memory=False)).retain_memory is False
    with pytest.raises(PetsegError, match="retain_host_memory"):
        setup_runtime(trainer_cfg(retain_host_memory="yes"))


def test_cudnn_benchmark_cannot_be_forced_beside_determinism() -> None:
    with pytest.raises(PetsegError, match="contradicts trainer.deterministic"):
        setup_runtime(trainer_cfg(cudnn_benchmark=True, deterministic=True))
    setup_runtime(trainer_cfg(cudnn_benchmark="auto", deterministic=True))  # auto: just off


@pytest.mark.parametrize(("value", "fused"), [("auto", True), (True, True), (False, False)])
def test_fused_adamw_follows_optim_fused_on_cpu(value: object, fused: bool) -> None:
    from petseg.build import build_optimizer

    cfg = OmegaConf.load(ROOT / "configs" / "optim" / "adamw.yaml")
    cfg.fused = value
    opt = build_optimizer(cfg, torch.nn.Linear(3, 2), torch.device("cpu"))
    assert bool(opt.param_groups[0]["fused"]) is fused


def test_fused_adamw_typo_is_a_user_error() -> None:
    from petseg.build import build_optimizer

    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "configs" / "optim" / "adamw.yaml"), {"fused": "yes"})
    with pytest.raises(PetsegError, match="optim.fused='yes'"):
        build_optimizer(cfg, torch.nn.Linear(3, 2), torch.device("cpu"))


def test_resolve_device_gives_each_ddp_rank_its_own_gpu_and_shares_the_cpu() -> None:
    rank_1 = DistInfo(rank=1, world_size=2, local_rank=1)
    assert resolve_device("cuda", rank_1) == torch.device("cuda", 1)
    assert resolve_device("cpu", rank_1) == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")
    if not torch.backends.mps.is_available():
        assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
