"""Wall-clock timing that is honest on GPUs (synchronise before reading the clock), and the
machine and code a number was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device | str) -> float:
    """perf_counter after all queued work on `device` has finished."""
    synchronize(device)
    return time.perf_counter()


def elapsed(device: torch.device | str, fn: Callable[[], Any]) -> float:
    """Seconds `fn()` takes on `device`: CUDA events around it on a GPU (queued after a
    synchronisation, so no earlier work is counted), a synchronised wall clock elsewhere."""
    if torch.device(device).type != "cuda":
        start = now(device)
        fn()
        return now(device) - start
    synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str) -> int:
    """CUDA peak allocation since the last reset; on CPU the process's resident set size."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(psutil.Process().memory_info().rss)


def bf16_matmul_speedup(size: tuple[int, int, int] = (1024, 576, 1536), repeats: int = 5) -> float:
    """How many times faster a bf16 matmul runs than fp32 on this CPU, at the embedded LLM's shapes.

    CPUs differ: with AMX exposed bf16 runs about 8x faster; with AVX-512 BF16 alone, or on AMD, no
    faster (docs/machine.md §5). Measured, not read from CPU flags: a VM may list what it does not give.
    """
    m, k, n = size
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b  # the first call pays oneDNN's set-up
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds[dtype] = time.perf_counter() - start
    return seconds[torch.float32] / seconds[torch.bfloat16]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device | str) -> str:
    """The device in words, for result files and model cards: GPU name, or CPU, cores and RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    return f"{cpu_name()}, {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"


def source_commit() -> tuple[str | None, bool | None]:
    """(this checkout's git commit, whether its tree holds uncommitted changes); Nones outside git.

    Read it before a run writes its outputs: written into a tracked folder, they would count as changes.
    """
    git = lambda *args: subprocess.run(  # noqa: E731
        ["git", *args], cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=20)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        return head.stdout.strip(), bool(git("status", "--porcelain").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None
