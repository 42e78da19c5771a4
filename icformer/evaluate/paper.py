"""The paper's reported numbers (summarised in docs/paper.md), each with the key of ours it is compared with."""

from __future__ import annotations

# Every number of the paper docs/paper.md summarises, with where ours comes from.
# Columns: table, setting, metric, paper value, key into the dict `summary.our_numbers` builds (None:
# we have no counterpart), methods whose `trained` flag the comparison depends on.
_RATIO_R1 = 0.516 / 0.555
_RATIO_R2 = 0.348 / 0.377
_RATIO_RL = 0.482 / 0.519
PAPER_NUMBERS: tuple[tuple[str, str, str, float, str | None, tuple[str, ...]], ...] = (
    # Table 1: compression time on one RTX A6000, ICAE -> IC-Former.
    ("Speed (Table 1)", "ICAE 8x512", "compress_s", 0.476, "bench:8x512:icae:compress_s", ()),
    ("Speed (Table 1)", "IC-Former 8x512", "compress_s", 0.007, "bench:8x512:icformer:compress_s", ()),
    ("Speed (Table 1)", "IC-Former vs ICAE 8x512", "speedup", 68.0, "bench:8x512:icformer:speedup_vs_icae", ()),
    ("Speed (Table 1)", "IC-Former vs full context 8x512", "total_speedup", 3.7,
     "bench:8x512:icformer:total_speedup_vs_full", ()),
    ("Speed (Table 1)", "ICAE 32x512", "compress_s", 1.848, "bench:32x512:icae:compress_s", ()),
    ("Speed (Table 1)", "IC-Former 32x512", "compress_s", 0.017, "bench:32x512:icformer:compress_s", ()),
    ("Speed (Table 1)", "IC-Former vs ICAE 32x512", "speedup", 108.0, "bench:32x512:icformer:speedup_vs_icae", ()),
    ("Speed (Table 1)", "IC-Former vs full context 32x512", "total_speedup", 3.8,
     "bench:32x512:icformer:total_speedup_vs_full", ()),
    ("Speed (Table 1)", "ICAE 8x2048", "compress_s", 3.268, "bench:8x2048:icae:compress_s", ()),
    ("Speed (Table 1)", "IC-Former 8x2048", "compress_s", 0.029, "bench:8x2048:icformer:compress_s", ()),
    ("Speed (Table 1)", "IC-Former vs ICAE 8x2048", "speedup", 112.0, "bench:8x2048:icformer:speedup_vs_icae", ()),
    ("Speed (Table 1)", "IC-Former vs full context 8x2048", "total_speedup", 5.3,
     "bench:8x2048:icformer:total_speedup_vs_full", ()),
    # Peak memory when compressing alone.
    ("Memory", "IC-Former compressing (lowest)", "peak_memory_gb", 2.28, "memory:icformer:min", ()),
    ("Memory", "IC-Former compressing (highest)", "peak_memory_gb", 3.52, "memory:icformer:max", ()),
    ("Memory", "ICAE compressing (lowest)", "peak_memory_gb", 19.76, "memory:icae:min", ()),
    ("Memory", "ICAE compressing (highest)", "peak_memory_gb", 38.74, "memory:icae:max", ()),
    # Table 2: FLOPs of compressing 512 tokens into 128 vectors on Llama-2-7B.
    ("FLOPs (Table 2)", "ICAE 512 tokens", "flops", 8.50e12, "flops:icae", ()),
    ("FLOPs (Table 2)", "IC-Former 512 tokens", "flops", 2.62e11, "flops:icformer", ()),
    ("FLOPs (Table 2)", "ICAE / IC-Former", "flops_ratio", 8.50e12 / 2.62e11, "flops:ratio", ()),
    ("FLOPs (Table 2)", "ICAE formula at Llama-2-7B sizes", "flops", 8.50e12, "flops:icae:llama2", ()),
    ("FLOPs (Table 2)", "IC-Former formula at Llama-2-7B sizes", "flops", 2.62e11, "flops:icformer:llama2", ()),
    # Fig. 5 / Table 3: reconstruction BLEU-4 after pre-training, 4x compression.
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 100 tokens", "bleu", 0.997, "rec:icformer:100", ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 200 tokens", "bleu", 0.997, "rec:icformer:200", ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 300 tokens", "bleu", 0.997, "rec:icformer:300", ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 400 tokens", "bleu", 0.989, "rec:icformer:400", ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 500 tokens", "bleu", 0.969, "rec:icformer:500", ("icformer",)),
    ("Reconstruction (Fig. 5)", "ICAE 128 slots, 500 tokens", "bleu", 0.965, "rec:icae:500", ("icae",)),
    ("Reconstruction (Fig. 5)", "IC-Former 64 digests, 500 tokens", "bleu", 0.75, None, ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 32 digests, 500 tokens", "bleu", 0.49, None, ("icformer",)),
    # Table 5: text randomness, 512 -> 128.
    ("Text randomness (Table 5)", "IC-Former, normal text", "bleu", 0.90, "rand:icformer:normal", ("icformer",)),
    ("Text randomness (Table 5)", "IC-Former, reversed", "bleu", 0.67, "rand:icformer:reversed", ("icformer",)),
    ("Text randomness (Table 5)", "IC-Former, patterned random", "bleu", 0.13, "rand:icformer:patterned",
     ("icformer",)),
    ("Text randomness (Table 5)", "IC-Former, random", "bleu", 0.008, "rand:icformer:random", ("icformer",)),
    # Table 4: PwC test, specific questions, greedy, up to 256 new tokens.
    *(
        ("PwC QA (Table 4)", setting, metric, value, key and f"qa:{key}:{metric}", (key,) if key else ())
        for setting, key, values in (
            ("full 512-token context", "full", (0.501, 0.331, 0.468)),
            ("ICAE 128 slots", "icae", (0.555, 0.377, 0.519)),
            ("IC-Former 128 digests", "icformer", (0.516, 0.348, 0.482)),
            ("IC-Former 64 digests", None, (0.377, 0.209, 0.343)),
            ("IC-Former 64+64 (two chunks)", None, (0.500, 0.327, 0.465)),
            ("IC-Former without pre-training", "icformer-no-pretrain", (0.389, 0.212, 0.355)),
        )
        for metric, value in zip(("rouge1_f", "rouge2_f", "rougeL_f"), values)
    ),
    *(
        ("PwC QA (Table 4)", "IC-Former / ICAE", f"{metric}_ratio", ratio, f"qa-ratio:icformer:icae:{metric}",
         ("icformer", "icae"))
        for metric, ratio in (("rouge1_f", _RATIO_R1), ("rouge2_f", _RATIO_R2), ("rougeL_f", _RATIO_RL))
    ),
    ("PwC QA (Table 4)", "IC-Former / full context", "rougeL_f_ratio", 0.482 / 0.468, "qa-ratio:icformer:full:rougeL_f",
     ("icformer",)),
)
_SPEED_FIELDS = {"icae:compress_s": "icae_s", "icformer:compress_s": "icformer_s",
                 "icformer:speedup_vs_icae": "speedup", "icformer:total_speedup_vs_full": "total_speedup"}


def paper_speed_rows() -> dict[tuple[int, int], dict[str, float]]:
    """The paper's Table 1 (one RTX A6000) by (batch, length): icae_s, icformer_s, speedup, total_speedup."""
    rows: dict[tuple[int, int], dict[str, float]] = {}
    for _, _, _, value, key, _ in PAPER_NUMBERS:
        if key and key.startswith("bench:"):
            _, shape, field_key = key.split(":", 2)
            batch, length = map(int, shape.split("x"))
            rows.setdefault((batch, length), {})[_SPEED_FIELDS[field_key]] = value
    return rows


# The sizes the paper's FLOPs (docs/paper.md) are computed at (Llama-2-7B, 512 -> 128).
LLAMA2_7B = dict(b=1, s=512, k=128, h=4096, m=11008)
