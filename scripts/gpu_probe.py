"""Where IC-Former's GPU time goes, at the paper's shapes (Llama-2-7B widths, k=128, L=512, bf16).

    python scripts/gpu_probe.py            # eager forward time, then the profiler's top CUDA ops
    python scripts/gpu_probe.py --compile  # also torch.compile's time for the same forward

A diagnostic for optimising `icformer/compressors/modeling_icformer.py` on a lent GPU (random weights and inputs: speed
depends on shapes only); `python -m icformer bench` remains the benchmark of record. The compiled
forward runs with autograd enabled (nothing requires grad), which takes the concatenating key path:
inductor rejects the in-place key writes of the no-grad path.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from icformer.compressors.modeling_icformer import ICFormerConfig, ICFormerModel

SHAPES = ((1, 512), (8, 2048), (32, 512))  # contexts x tokens: 1, 32 and 32 chunks of 512


def median_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the forward")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ICFormerModel(ICFormerConfig()).to("cuda", torch.bfloat16).eval().requires_grad_(False)
    compiled = torch.compile(model.forward, dynamic=False) if args.compile else None
    for batch, length in SHAPES:
        chunks = torch.randn(batch * length // 512, 512, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
        with torch.no_grad():
            line = f"{batch}x{length}: eager forward {median_ms(lambda: model(chunks)):.2f} ms"
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    model(chunks)
                torch.cuda.synchronize()
        if compiled is not None:
            with torch.enable_grad():
                start = time.perf_counter()
                compiled(chunks)
                torch.cuda.synchronize()
                line += (f", compiled {median_ms(lambda: compiled(chunks)):.2f} ms "
                         f"(first call {time.perf_counter() - start:.0f} s)")
        print(line, flush=True)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=50))


if __name__ == "__main__":
    main()
