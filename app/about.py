"""Static text for the About tab: the method in a few lines, a diagram, citations, limitations."""

from __future__ import annotations

# A small hand-drawn SVG: context embeddings -> IC-Former cross-attention -> k digests -> frozen LLM.
DIAGRAM_SVG = """
<svg class="icf-diagram" viewBox="0 0 760 230" xmlns="http://www.w3.org/2000/svg" role="img"
     aria-label="IC-Former reads word embeddings through cross-attention and hands k digest vectors to the frozen LLM">
  <defs>
    <marker id="icf-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">
      <path d="M0,0 L10,5 L0,10 z" fill="#64748b"/>
    </marker>
  </defs>
  <style>
    .t { font: 13px sans-serif; fill: #1f2937; }
    .s { font: 11px sans-serif; fill: #64748b; }
    .b { font: bold 14px sans-serif; fill: #1f2937; }
  </style>
  <text x="20" y="22" class="b">context: n tokens</text>
  <g>
    <rect x="20" y="34" width="22" height="22" rx="3" fill="#e0e7ff" stroke="#6366f1"/>
    <rect x="46" y="34" width="22" height="22" rx="3" fill="#e0e7ff" stroke="#6366f1"/>
    <rect x="72" y="34" width="22" height="22" rx="3" fill="#e0e7ff" stroke="#6366f1"/>
    <rect x="98" y="34" width="22" height="22" rx="3" fill="#e0e7ff" stroke="#6366f1"/>
    <text x="128" y="50" class="t">…</text>
    <rect x="146" y="34" width="22" height="22" rx="3" fill="#e0e7ff" stroke="#6366f1"/>
    <rect x="172" y="34" width="22" height="22" rx="3" fill="#e0e7ff" stroke="#6366f1"/>
  </g>
  <text x="20" y="76" class="s">frozen LLM word embeddings e(w) — no LLM forward pass</text>
  <path d="M108,84 L108,112" stroke="#64748b" stroke-width="2" marker-end="url(#icf-arrow)"/>
  <rect x="20" y="116" width="250" height="70" rx="10" fill="#eef2ff" stroke="#4f46e5" stroke-width="2"/>
  <text x="145" y="140" class="b" text-anchor="middle">IC-Former (3 layers)</text>
  <text x="145" y="158" class="s" text-anchor="middle">causal cross-attention + SwiGLU</text>
  <text x="145" y="174" class="s" text-anchor="middle">queries: k learnable digest tokens</text>
  <text x="145" y="206" class="s" text-anchor="middle">cost O(k·n): linear in the context length</text>
  <path d="M272,151 L338,151" stroke="#64748b" stroke-width="2" marker-end="url(#icf-arrow)"/>
  <text x="350" y="118" class="b">k digest vectors</text>
  <g>
    <rect x="350" y="134" width="22" height="34" rx="3" fill="#4f46e5"/>
    <rect x="376" y="134" width="22" height="34" rx="3" fill="#4f46e5"/>
    <rect x="402" y="134" width="22" height="34" rx="3" fill="#4f46e5"/>
    <rect x="428" y="134" width="22" height="34" rx="3" fill="#4f46e5"/>
  </g>
  <text x="350" y="186" class="s">k ≪ n (paper: 128 per 512 tokens)</text>
  <path d="M456,151 L522,151" stroke="#64748b" stroke-width="2" marker-end="url(#icf-arrow)"/>
  <rect x="528" y="106" width="214" height="90" rx="10" fill="#ecfdf5" stroke="#10b981" stroke-width="2"/>
  <text x="635" y="132" class="b" text-anchor="middle">frozen target LLM</text>
  <text x="635" y="152" class="s" text-anchor="middle">[digests][task] + question</text>
  <text x="635" y="170" class="s" text-anchor="middle">→ answer, or the context back</text>
  <text x="635" y="186" class="s" text-anchor="middle">(soft prompt via inputs_embeds)</text>
  <text x="350" y="222" class="s">ICAE instead runs the whole LLM (+LoRA) over every chunk and its k slots</text>
</svg>
"""

METHOD_MD = """
### How IC-Former compresses a context

A long context is replaced by a few **digest vectors** that a frozen LLM reads as a soft prompt.
IC-Former never runs the LLM to compress: a few cross-attention layers read the LLM's own
(frozen) **word embeddings** of the context, with k learnable digest tokens as queries. Each digest
sees the whole context and the digests before it. Contexts longer than the chunk limit L are split
into equal chunks, each compressed into k vectors, and the results are concatenated. With chunks,
both methods grow linearly with the context; what differs is the work per chunk: IC-Former runs 3
small cross-attention layers over the chunk's word embeddings, ICAE the whole LLM (with LoRA) over
the chunk and its k memory slots. The paper reports 68–112× faster compression on an RTX A6000 at
about 1/32 of ICAE's FLOPs; the Speed tab measures both here.

Training keeps the LLM frozen: pre-training teaches the digests to reconstruct the context
(the *Reconstruct* tab), fine-tuning teaches them to answer prompts about it (the *Ask* column).
"""

PROFILE_CHOICE_HTML = (
    "The model profile is chosen when the app starts, with <code>python app.py --profile NAME</code> or "
    "<code>ICFORMER_PROFILE=NAME</code>. Every visitor shares one copy of the model, so it cannot be "
    "switched from this page."
)

LIMITATIONS_MD = """
### Limitations of this demo

- **Lightly trained.** The checkpoints in `assets/checkpoints/` were trained for minutes on 2 CPU cores, a tiny
  fraction of the paper's GPU training; each one's model card (its path is in the model table) gives the samples seen
  and its held-out reconstruction BLEU. Answers and reconstructions read like the training prose but miss the
  content; the timings, FLOPs and memory numbers are the meaningful part. A missing checkpoint is replaced by
  random weights, and a banner says so.
- **Small model.** The embedded default is SmolLM2-135M-Instruct with k=32 digests per 128-token chunk
  (the paper: Llama-2-7B, 128 per 512). Quality does not carry over one-to-one from the paper.
- **CPU timings.** On CPU, times are wall-clock of one request on a shared machine; the paper's speed-ups were
  measured on a GPU with batches. The device is shown next to every number.
- **Memory.** On CUDA the number is the peak allocation of that call; on CPU it is the whole process's
  resident memory, which includes the LLM itself.
- **One shared model.** Requests are queued and run one at a time; each visitor's compressed contexts stay
  in their own session.
- **Specific knowledge.** Compression is lossy: exact numbers and names are the first thing to go, as the
  paper's ROUGE scores (about 0.5) suggest.
"""

CITATIONS_MD = """
### Citations

- Xiangfeng Wang et al. **In-Context Former: Lightning-fast Compressing Context for Large Language Model.**
  Findings of EMNLP 2024. [arXiv:2406.13618](https://arxiv.org/abs/2406.13618)
- Tao Ge et al. **In-context Autoencoder for Context Compression in a Large Language Model.** ICLR 2024.
  [arXiv:2307.06945](https://arxiv.org/abs/2307.06945)

Example texts: public-domain classics (Melville, Austen, Conan Doyle, Lincoln, the Declaration of
Independence) and two short pieces written for this project.
"""
