"""Multi-process (DistributedDataParallel) support, a no-op in a single process.

``torchrun --nproc_per_node=N src/train.py ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; SLURM jobs started by
submitit set SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (then MASTER_ADDR/PORT must be set too, as
submitit's launcher or an sbatch script does). Every rank trains on its shard of each epoch; metrics
are summed across ranks, so the reported Dice equals a single-process evaluation of the same weights.
Only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def _env_int(*names: str) -> int | None:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return None


def launched_info() -> DistInfo:
    """Rank and world size a launcher (torchrun, SLURM tasks) put in the environment; SINGLE if none.
    Reads the environment only: usable before anything is initialised."""
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
    if world <= 1:
        return SINGLE
    rank = _env_int("RANK", "SLURM_PROCID") or 0
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def init_distributed() -> DistInfo:
    """Join the process group the launcher described in the environment; SINGLE when there is none."""
    info = launched_info()
    if not info.enabled:
        return SINGLE
    if "MASTER_ADDR" not in os.environ and "SLURM_NTASKS" in os.environ:
        _export_slurm_rendezvous()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def _export_slurm_rendezvous() -> None:
    """SLURM tasks (submitit's launcher, srun) know their rank but not where rank 0 listens: submitit
    derives MASTER_ADDR (the job's first host) and MASTER_PORT (from the job id) the same way in every
    task. All GPUs stay visible, as runtime.resolve_device picks cuda:<local rank>."""
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return  # init_process_group then names the missing MASTER_ADDR itself
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP wrapper for training (the bare model stays the one to save and evaluate)."""
    if not info.enabled:
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's BatchNorm running statistics before evaluating.

    Each rank updated them from its own last batches; evaluating with rank 0's copy on every shard
    scores exactly the weights that rank 0 saves.
    """
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise sum of a list of numbers over all ranks (float64, so sums stay exact enough)."""
    if not info.enabled:
        return values
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_list(items: list[Any], info: DistInfo) -> list[Any]:
    """Concatenate each rank's list, in rank order."""
    if not info.enabled:
        return items
    gathered: list[list[Any]] = [[] for _ in range(info.world_size)]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` on every rank (picklable objects)."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
