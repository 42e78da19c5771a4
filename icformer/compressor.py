"""`ContextCompressor`: the one entry point. Compress a context, then ask or reconstruct.

    cc = ContextCompressor.from_default()
    z = cc.compress(text)                  # CompressedContext (IC-Former digests)
    cc.answer(z, "Who wrote the letter?")  # Answer with timings

Methods share one interface: "icformer" (digests from word embeddings), "icae" (slots
from the LLM run with LoRA; see compressors/icae.py) and "full" (the raw context's own token
embeddings, the reference every comparison needs).
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .compressors.base import CompressorModel
from .context import VERSION, CompressedContext
from .defaults import CHECKPOINTS_DIR, DEFAULT_PROFILE, METHODS, RECONSTRUCTION_MARGIN
from .generation import Answer, SamplingOptions, decode_text, generate_from_embeds, stream_from_embeds
from .llm import TargetLLM, load_llm
from .compressors import check_fits, load_model, new_model
from .profiles import ProfileUnavailable, embedded_profile, get_profile, missing_pieces, resolve_profile_name
from .prompts import assemble, context_prefix_ids, prompt_style, question_layout, reconstruction_layout, stop_token_ids
from .spec import CompressorSpec
from .text import DEFAULT_MAX_CONTEXT_TOKENS, check_length, clean_text
from .timing import now, peak_memory_bytes, reset_peak_memory


def encode(model: CompressorModel | None, target: TargetLLM, ids: list[list[int]]) -> list[torch.Tensor]:
    """Vectors per context: the compressor's (IC-Former digests, ICAE slots), or (model None) the
    context's own token embeddings, the full-context reference.

    Shared by inference and training, so gradients flow when the caller allows them. A
    compressor reads the context as its prompt style says (ICAE v2: <bos> first).
    """
    prefix = context_prefix_ids(target.tokenizer, prompt_style(model))
    if prefix:
        ids = [prefix + list(i) for i in ids]
    if model is not None:
        return model.encode(ids, target.embed)
    return [target.embed(torch.tensor(i, device=target.device)) for i in ids]


class UntrainedWarning(UserWarning):
    """The compressor's weights are random: its outputs are noise, not results."""


def build_compressor(spec: CompressorSpec, *, target: TargetLLM | None = None, **kwargs: Any) -> "ContextCompressor":
    """The one factory: the LLM (or `target`, already loaded) and the compressors `spec` names.

    Extra keyword arguments go to ContextCompressor (e.g. max_context_tokens)."""
    if target is None:
        dtype = getattr(torch, spec.dtype) if spec.dtype else None
        target = load_llm(spec.llm, gguf_file=spec.gguf_file, device=spec.device, dtype=dtype)
    shape = dict(seed=spec.seed, num_digest_tokens=spec.num_digest_tokens, chunk_size=spec.chunk_size)
    icformer = load_model(spec.icformer, target, "icformer") if spec.icformer else new_model("icformer", target, **shape)
    icae = None
    if spec.icae is True:
        icae = new_model("icae", target, **shape)
    elif spec.icae:
        icae = load_model(spec.icae, target, "icae")
    return ContextCompressor(target, icformer, icae, **kwargs)


def load_profile(name: str | None = None, *, device: str | None = None, seed: int = 0,
                 **kwargs: Any) -> "ContextCompressor":
    """A ready `ContextCompressor` for a profile (None: $ICFORMER_PROFILE, else "embedded").

    Raises ProfileUnavailable (a FileNotFoundError) naming what is missing and how to get it.
    Extra keyword arguments go to ContextCompressor (e.g. max_context_tokens).
    """
    profile = get_profile(name)
    missing = missing_pieces(profile, probe_network=True)
    if missing:
        raise ProfileUnavailable(profile.name, missing)
    try:
        return build_compressor(profile.spec(device=device, seed=seed), **kwargs)
    except FileNotFoundError as err:  # the LLM is not cached and not downloadable (offline, gated, no token)
        how = f"; {profile.llm_how_to}" if profile.llm_how_to else ""
        raise ProfileUnavailable(profile.name, [f"LLM {profile.llm_source()}: {err}{how}"]) from err


def load_profile_or_fallback(
    name: str | None = None, *, fallback: str = DEFAULT_PROFILE, **kwargs: Any
) -> tuple["ContextCompressor", str | None]:
    """(compressor, None) for the profile, or (the fallback profile's compressor, why) when it
    cannot be loaded: the app keeps running on the embedded model and shows the message."""
    resolved = resolve_profile_name(name)
    if resolved == fallback:
        return load_profile(fallback, **kwargs), None
    try:
        return load_profile(resolved, **kwargs), None
    except (ProfileUnavailable, ValueError, OSError, RuntimeError) as err:
        # ValueError: unknown name or a checkpoint that does not fit; RuntimeError: e.g. out of memory
        reason = str(err) if isinstance(err, (ProfileUnavailable, ValueError)) else f"{type(err).__name__}: {err}"
        message = f"{reason}\nUsing the {fallback!r} profile instead."
        return load_profile(fallback, **kwargs), message


class ContextCompressor:
    def __init__(
        self,
        target: TargetLLM,
        icformer: CompressorModel,
        icae: CompressorModel | None = None,
        *,
        max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    ) -> None:
        for model in filter(None, (icformer, icae)):
            prompt_style(model)  # an unknown style fails here, not at the first question
            check_fits(model, target)
        self.target = target
        self.icformer = icformer.to(device=target.device, dtype=target.dtype).eval().requires_grad_(False)
        self.icae = icae.to(target.device).eval().requires_grad_(False) if icae is not None else None
        self.max_context_tokens = max_context_tokens
        for model in filter(None, (icformer, icae)):
            if not model.trained:
                warnings.warn(
                    f"The {model.method} compressor is not trained (random weights, or a training run "
                    "that has not finished its schedule): its outputs are noise. Results carry trained=False.",
                    UntrainedWarning,
                    stacklevel=3,
                )

    # ----------------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(
        cls,
        llm: str | None = None,
        icformer: str | Path | None = None,
        icae: str | Path | bool | None = None,
        *,
        gguf_file: str | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> "ContextCompressor":
        """Load an LLM (HF id, local dir, GGUF, or None for the embedded default) and compressors.

        Without an IC-Former checkpoint a seeded random one sized for the LLM is built;
        `icae` is an ICAE checkpoint, True for a seeded random ICAE, or None/False for none.
        """
        dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else None
        spec = CompressorSpec(llm=llm, gguf_file=gguf_file, icformer=icformer, icae=icae, device=device,
                              dtype=dtype_name, seed=seed)
        return build_compressor(spec, **kwargs)

    @classmethod
    def from_default(cls, *, device: str | None = None, assets_dir: str | Path | None = None, seed: int = 0,
                     **kwargs: Any) -> "ContextCompressor":
        """The embedded default: SmolLM2-135M-Instruct plus the checkpoints under assets/.

        A missing checkpoint is replaced by a seeded random model (marked trained=False), so
        IC-Former and ICAE can be compared out of the box.
        """
        checkpoints = Path(assets_dir) / "checkpoints" if assets_dir else CHECKPOINTS_DIR
        return build_compressor(embedded_profile(checkpoints).spec(device=device, seed=seed), **kwargs)

    @classmethod
    def from_profile(cls, name: str | None = None, **kwargs: Any) -> "ContextCompressor":
        """A named setting from profiles.py: "embedded" (default), "paper"; None reads $ICFORMER_PROFILE."""
        return load_profile(name, **kwargs)

    def replacing(self, **models: CompressorModel | None) -> "ContextCompressor":
        """This compressor's LLM with other models (``icformer=``, ``icae=``): an evaluation swaps one in."""
        chosen = {"icformer": self.icformer, "icae": self.icae, **models}
        return ContextCompressor(self.target, chosen["icformer"], chosen["icae"],
                                 max_context_tokens=self.max_context_tokens)

    # ----------------------------------------------------------------------- properties

    @property
    def tokenizer(self):
        return self.target.tokenizer

    @property
    def llm(self):
        return self.target.model

    @property
    def device(self) -> torch.device:
        return self.target.device

    def methods(self) -> list[str]:
        """Methods this instance can run."""
        return [m for m in METHODS if m != "icae" or self.icae is not None]

    def model_for(self, method: str) -> CompressorModel | None:
        """The model behind `method` (None for "full", which has none); refuses an unknown or unloaded one."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        if method == "icae" and self.icae is None:
            raise ValueError("no ICAE model is loaded; pass icae=<checkpoint dir> to from_pretrained")
        return {"icformer": self.icformer, "icae": self.icae}.get(method)

    # ----------------------------------------------------------------------- compress

    def tokenize(self, text: str | bytes, max_tokens: int | None = None) -> list[int]:
        """Clean and tokenise a context, refusing over-long input before tokenising it.

        ``max_tokens`` lowers this compressor's limit for one call (an app with a smaller budget)."""
        limit = min(max_tokens or self.max_context_tokens, self.max_context_tokens)
        text = clean_text(text, "context")
        check_length(len(text), limit, unit="characters")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        check_length(len(ids), limit)
        if not ids:
            raise ValueError("The context produced no tokens.")
        return ids

    @torch.no_grad()
    def compress(
        self, text: str | bytes | Sequence[str | bytes], method: str = "icformer"
    ) -> CompressedContext | list[CompressedContext]:
        """Compress one context, or several in one batched call (same vectors as one by one)."""
        single = isinstance(text, (str, bytes, bytearray))
        texts = [text] if single else list(text)
        if not texts:
            raise ValueError("no contexts given")
        model = self.model_for(method)
        ids = [self.tokenize(t) for t in texts]
        reset_peak_memory(self.device)
        start = now(self.device)
        vectors = encode(model, self.target, ids)
        seconds = now(self.device) - start
        memory = peak_memory_bytes(self.device)
        k, L = (model.config.num_digest_tokens, model.config.chunk_size) if model else (None, None)
        trained = model.trained if model else True
        results = [
            CompressedContext(
                vectors=v,
                metadata=dict(
                    method=method,
                    llm=self.target.name,
                    llm_hash=self.target.fingerprint,
                    llm_dtype=self.target.dtype_name,
                    hidden_size=self.target.hidden_size,
                    k=k,
                    L=L,
                    num_chunks=len(v) // k if k else 1,
                    num_tokens=len(i),
                    version=VERSION,
                    trained=trained,
                    device=str(self.device),
                    batch_size=len(ids),
                    memory_bytes=memory,
                    memory_kind="cuda_peak" if self.device.type == "cuda" else "cpu_rss",
                ),
                # One batched call: each context is charged the batch's wall time.
                timings={"compress_s": seconds},
            )
            for i, v in zip(ids, vectors)
        ]
        return results[0] if single else results

    # ----------------------------------------------------------------------- decode

    def _as_context(self, context: CompressedContext | str | bytes, method: str | None) -> CompressedContext:
        if isinstance(context, CompressedContext):
            if method is not None and method != context.method:
                raise ValueError(f"context was compressed with {context.method!r}, not {method!r}")
            self._check_compatible(context)
            return context
        return self.compress(context, method or "icformer")

    def _check_compatible(self, context: CompressedContext) -> None:
        meta = context.metadata
        if meta["llm_hash"] != self.target.fingerprint or meta["hidden_size"] != self.target.hidden_size:
            dtype = self.target.dtype_name
            why = ""  # the hash covers the weights' dtype: the same LLM loaded as bf16 on GPU differs from fp32
            if meta.get("llm_dtype") not in (None, dtype):
                why = f" It was compressed with the weights in {meta['llm_dtype']}, this LLM runs in {dtype}."
            raise ValueError(
                f"This context was compressed for LLM {meta['llm']!r} (hash {meta['llm_hash'][:12]}, hidden "
                f"{meta['hidden_size']}), but this compressor uses {self.target.name!r} (hash "
                f"{self.target.fingerprint[:12]}, hidden {self.target.hidden_size}).{why} "
                "Compress it again with this LLM."
            )
        self.model_for(context.method)

    def answer(
        self,
        context: CompressedContext | str | bytes,
        question: str | bytes,
        *,
        method: str | None = None,
        **sampling: Any,
    ) -> Answer:
        """Answer a question from a compressed context (a raw string is compressed first)."""
        return self._generate(*self._question_prompt(context, question, method), SamplingOptions(**sampling))

    def stream_answer(
        self, context: CompressedContext | str | bytes, question: str | bytes, *, method: str | None = None,
        **sampling: Any,
    ) -> Iterator[Answer]:
        """`answer`, one token at a time: an `Answer` so far per generated token, the last with ``done=True``.

        Each `next()` is one forward pass of the LLM, so callers sharing the model can take turns
        between tokens; stop iterating to cancel (the model keeps no state of it).
        """
        ctx, layout = self._question_prompt(context, question, method)
        return self._stream(ctx, layout, SamplingOptions(**sampling))

    def reconstruct(
        self,
        context: CompressedContext | str | bytes,
        *,
        method: str | None = None,
        **sampling: Any,
    ) -> Answer:
        """Decode the vectors back into text (the autoencoding task the compressor pre-trains on).

        The default limit is the context's own length plus a margin (`RECONSTRUCTION_MARGIN`)."""
        ctx, layout, options = self._reconstruction_prompt(context, method, sampling)
        return self._generate(ctx, layout, options)

    def stream_reconstruct(
        self, context: CompressedContext | str | bytes, *, method: str | None = None, **sampling: Any
    ) -> Iterator[Answer]:
        """`reconstruct`, one token at a time (see `stream_answer`)."""
        return self._stream(*self._reconstruction_prompt(context, method, sampling))

    def _question_prompt(self, context, question, method):
        question = clean_text(question, "question")
        ctx = self._as_context(context, method)
        model = self.model_for(ctx.method)  # None for the full context: chat template, no task vector
        return ctx, question_layout(self.tokenizer, question, task=None if model is None else "FT",
                                    style=prompt_style(model))

    def _reconstruction_prompt(self, context, method, sampling: dict):
        ctx = self._as_context(context, method)
        if ctx.method == "full":
            raise ValueError("the full-context method keeps the text itself; there is nothing to reconstruct")
        sampling.setdefault("max_new_tokens", ctx.num_tokens + RECONSTRUCTION_MARGIN)
        layout = reconstruction_layout(self.tokenizer, prompt_style(self.model_for(ctx.method)))
        return ctx, layout, SamplingOptions(**sampling)

    def _inputs(self, ctx: CompressedContext, layout) -> torch.Tensor:
        model = self.model_for(ctx.method)
        task_vector = model.task_embedding(layout.task) if layout.task else None
        vectors = ctx.vectors.to(device=self.device, dtype=self.target.dtype)
        return assemble(self.target.embed, layout, vectors, task_vector)

    def _generate(self, ctx: CompressedContext, layout, options: SamplingOptions) -> Answer:
        inputs = self._inputs(ctx, layout)
        ids, timings, memory = generate_from_embeds(
            self.llm, self.tokenizer, inputs, options, stop_token_ids(self.tokenizer), self._decoder
        )
        return self._result(ctx, inputs, ids, timings, memory, done=True)

    def _stream(self, ctx: CompressedContext, layout, options: SamplingOptions) -> Iterator[Answer]:
        options.check()  # a bad option fails at the call, not at the first next()
        inputs = self._inputs(ctx, layout)
        steps = stream_from_embeds(self.llm, self.tokenizer, inputs, options, stop_token_ids(self.tokenizer),
                                   self._decoder)
        return (self._result(ctx, inputs, s.token_ids, s.timings, s.peak_memory_bytes, done=s.done) for s in steps)

    def _result(self, ctx: CompressedContext, inputs: torch.Tensor, ids: list[int], timings: dict,
                memory: int | None, *, done: bool) -> Answer:
        compress_s = ctx.timings.get("compress_s", 0.0)
        timings = {"compress_s": compress_s, **timings}
        timings["total_s"] = compress_s + timings["prefill_s"] + timings["decode_s"]
        return Answer(
            text=decode_text(self.tokenizer, ids).strip(),
            token_ids=ids,
            method=ctx.method,
            timings=timings,
            peak_memory_bytes=memory,
            memory_kind="cuda_peak" if self.device.type == "cuda" else "cpu_rss",
            trained=ctx.trained,
            prompt_positions=int(inputs.shape[0]),
            device=str(self.device),
            done=done,
        )

    def _decoder(self):
        """The LLM decodes with any ICAE adapter switched off (it only encodes)."""
        return self.icae.adapter_disabled() if self.icae is not None else nullcontext()
