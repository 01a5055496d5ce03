"""Device choice and torch.distributed setup (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK).

Parallelism is applied to a plain model from outside (as torchtitan does), so the model
file stays free of distributed code: DDP by default, FSDP2 `fully_shard` per block as an option.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("glassgpt")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the heap instead of returning them to the OS.

    glibc hands large blocks (≥ 32 MB at most) back with munmap, so every training step
    page-faults its activations in again. Raising the mmap/trim thresholds keeps them;
    measured ~10-25% faster steps for a 5M model on 2 cores (docs/devlog.md). glibc only."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)
    return bool(ok and libc.mallopt(M_TOP_PAD, 1 << 28))


def flush_denormals() -> bool | None:
    """Flush denormal floats to zero (FTZ/DAZ) on the CPU: True if every thread of torch's pool
    flushes, False if some do not, None where the CPU cannot.

    A confident model's tiny gradients fall into the denormal range, where x86 arithmetic is many
    times slower: the vision preset's steps took ~1.5x as long by mid-run, not the machine (devlog,
    bench/denormals.py). The flag is per thread and a thread inherits it when started, so this must
    run before torch's first parallel op; the check multiplies two chunks per thread into the range."""
    if not torch.set_flush_denormal(True):
        return None
    y = torch.full((32768 * 2 * torch.get_num_threads(),), 1e-30) * 1e-10  # 1e-40 is denormal in fp32
    return not bool(y.any())


def autocast(device):
    """bf16 autocast on a CUDA device, nothing elsewhere (fp32 on CPU): training, eval and serving."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def auto_device(local_rank: int = 0) -> str:
    if torch.cuda.is_available():
        return f"cuda:{local_rank}"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def setup() -> Dist:
    tune_cpu_allocator()
    if flush_denormals() is False:
        log.warning("denormal floats are flushed on some CPU threads only (torch's threads started before "
                    "glassgpt.train.dist.flush_denormals()); late steps may run ~1.5x slower")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=auto_device())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = auto_device(local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model, d: Dist, fsdp: bool):
    """DDP or FSDP2 around a plain model. Returns the module to call in training."""
    if d.world == 1 and not fsdp:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.local_rank] if d.device.startswith("cuda") else None)
