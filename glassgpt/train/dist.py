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


def _glibc():
    """glibc through ctypes, or None (not Linux, or no libc.so.6): the heap settings are glibc's."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the heap instead of returning them to the OS.

    glibc hands large blocks (≥ 32 MB at most) back with munmap, so every training step
    page-faults its activations in again. Raising the mmap/trim thresholds keeps them;
    measured ~10-25% faster steps for a 5M model on 2 cores (docs/devlog.md). glibc only."""
    libc = _glibc()
    if libc is None:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)
    return bool(ok and libc.mallopt(M_TOP_PAD, 1 << 28))


def release_heap() -> None:
    """Give the heap's free memory back to the OS (glibc malloc_trim). With the heap kept
    (tune_cpu_allocator), buffers freed when a run changes shape (a long-context curriculum
    going from 2K to 8K to 32K rows) would otherwise stay resident beside the new ones: the
    `long` stage peaked at 9.9 GB that way."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


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


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform reports: benches print it."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """What the CPU offers torch: its vector ISA and whether bf16 matmuls are native."""
    native = [n for n, ok in (("amx_bf16", torch.cpu._is_amx_tile_supported()),
                              ("avx512_bf16", torch.cpu._is_avx512_bf16_supported())) if ok]
    return f"{torch.backends.cpu.get_cpu_capability()}" + (f" + {', '.join(native)}" if native else "")


def native_bf16(device) -> bool:
    """bf16 matmuls in hardware: CUDA with bf16 support, a CPU with AMX or AVX512-BF16."""
    dev = str(device)
    if dev.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    if dev == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def resolve_precision(precision: str, device) -> str:
    """'auto' → 'bf16' where the hardware has native bf16, else 'fp32'. Master weights, optimizer
    state, the loss and norm statistics stay fp32 either way (autocast only lowers matmuls)."""
    from glassgpt.errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    native = native_bf16(device)
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native:
        if str(device).startswith("cuda"):
            raise ConfigError(f"precision bf16 requested, but {torch.cuda.get_device_name()} has no bf16; use fp32")
        log.warning("precision bf16 on %s without native bf16 (no AMX or AVX512-BF16): emulated, slower than fp32", device)
    return precision


def autocast(device, precision: str | None = None):
    """The context a forward runs in. precision 'bf16' or 'fp32' (resolved); None keeps serving's
    default: bf16 on a CUDA device, fp32 elsewhere."""
    dev = str(device).split(":")[0]
    if precision is None:
        precision = "bf16" if dev == "cuda" else "fp32"
    if precision == "bf16" and dev in ("cuda", "cpu"):
        return torch.autocast(dev, dtype=torch.bfloat16)
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
