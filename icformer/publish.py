"""Publishing finished training runs as the embedded default's checkpoints (assets/checkpoints/).

A published checkpoint is the final weights of its last stage (in bfloat16: half the bytes in
git and in every tree sent to a GPU machine; loading upcasts them to the model's dtype), every
stage's config and metrics log, and a model card computed from them and nothing else: samples
seen, training time, machine, final losses from the logs, and held-out reconstruction BLEU
measured here, on the published weights and validation text the runs never trained on.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from .files import partial_path, sha256_file
from .compressors.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_checkpoint_metadata
from .defaults import ASSETS_DIR
from .generation import NO_REPEAT_NGRAM
from .train import latest_checkpoint, logged_steps

# Published name -> the run its weights come from. The runs before it are found through `init_from`
# (a stage that starts from another run's checkpoint); a run that `continue_from`s another carries that
# run's log in its own, so it is one stage.
FINAL_RUNS: dict[str, str] = {
    "icformer": "icformer-finetune",
    "icae": "icae-finetune",
    "icformer-no-pretrain": "icformer-no-pretrain",
}
CARD_NAME, CARD_JSON = "README.md", "card.json"
DATA_FILES = {"pretrain": "pretrain_train.jsonl", "finetune": "instruct_train.jsonl"}
PUBLISHED_DTYPE = torch.bfloat16
EXPORTED_METADATA = "metadata.json"  # a checkpoint's record where export_runs left its weights behind


@dataclass
class StageSummary:
    """One training run, as its logs and final checkpoint record it."""

    run: str
    method: str
    stage: str
    steps: int
    samples_seen: int
    train_seconds: float  # sum of the logged step times (excludes validation and saving)
    final_loss: float  # mean training loss over the last 10 steps
    valid_loss: float | None
    machine: str | None
    torch: str | None
    data_file: str
    data_sha256: str | None
    config: dict[str, Any]
    precision: str | None = None  # accelerate's mixed_precision: "bf16" or "no"; None in older records


def final_checkpoint(run_dir: Path) -> Path:
    """The weights a finished run ended with; an unfinished run is refused, naming how far it got."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"{run_dir} has no checkpoint yet: train it first (scripts/train_default.sh)")
    metadata = _checkpoint_metadata(checkpoint / "model")
    if json.loads(metadata.get("trained", "false")) is not True:
        step = json.loads(metadata.get("record", "{}")).get("steps")
        raise ValueError(f"{run_dir} is unfinished (step {step} of {config['max_steps']}): resume it before publishing")
    return checkpoint / "model"


def _checkpoint_metadata(model_dir: Path) -> dict[str, str]:
    """A checkpoint's own record: from its weights, or from the metadata.json that `export_runs`
    leaves in place of weights nobody publishes."""
    if (model_dir / WEIGHTS_NAME).is_file():
        return read_checkpoint_metadata(model_dir / WEIGHTS_NAME)
    if (model_dir / EXPORTED_METADATA).is_file():
        return json.loads((model_dir / EXPORTED_METADATA).read_text())
    raise FileNotFoundError(f"{model_dir} has neither {WEIGHTS_NAME} nor {EXPORTED_METADATA}")


def export_runs(runs_dir: Path, dest: Path) -> list[str]:
    """What `publish` needs of the runs in `runs_dir`, into `dest`: each run's config and metrics log
    and its last checkpoint's config and record, with bf16 weights for the runs a checkpoint is
    published from (the last of each chain; optimizer state never). Returns the runs exported.

    A GPU machine returns at most 64 MiB, which the four runs' weights in bf16 would exceed.
    """
    finals = set(FINAL_RUNS.values())
    exported = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if (p / "config.yaml").is_file()):
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            continue
        model = dest / run_dir.name / checkpoint.name / "model"
        model.mkdir(parents=True)
        for name in ("config.yaml", "metrics.jsonl"):
            shutil.copy(run_dir / name, dest / run_dir.name / name)
        shutil.copy(checkpoint / "model" / CONFIG_NAME, model / CONFIG_NAME)
        if run_dir.name in finals:
            write_bf16_weights(checkpoint / "model" / WEIGHTS_NAME, model / WEIGHTS_NAME)
        else:
            metadata = read_checkpoint_metadata(checkpoint / "model" / WEIGHTS_NAME)
            (model / EXPORTED_METADATA).write_text(json.dumps(metadata, indent=1) + "\n")
        exported.append(run_dir.name)
    return exported


def write_bf16_weights(source: Path, dest: Path) -> None:
    """`source`'s safetensors with every floating tensor rounded to bfloat16, its metadata kept.

    Written beside `dest` and renamed over it, so `dest` may be `source`, and a reader never sees
    half a file.
    """
    metadata = read_checkpoint_metadata(source)
    tensors = {name: t.to(PUBLISHED_DTYPE) if t.is_floating_point() else t for name, t in load_file(str(source)).items()}
    partial = partial_path(dest)
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, dest)


def chain_runs(runs_dir: Path, final_run: str) -> list[str]:
    """The runs under `runs_dir` that `final_run` went through, first to last, following each run's
    `init_from` while it names another run's checkpoint (`<run>/checkpoint-N/model`, matched by run name so
    that paths written on another machine still link)."""
    chain = [final_run]
    while (runs_dir / chain[0] / "config.yaml").is_file():
        parts = Path(yaml.safe_load((runs_dir / chain[0] / "config.yaml").read_text()).get("init_from") or "").parts
        if len(parts) < 3 or not parts[-2].startswith("checkpoint-") or not (runs_dir / parts[-3] / "config.yaml").is_file():
            return chain
        if parts[-3] in chain:
            raise ValueError(f"the runs under {runs_dir} start from each other in a loop: {[parts[-3], *chain]}")
        chain.insert(0, parts[-3])
    return chain


def summarise_stage(run_dir: Path, data_dir: Path) -> StageSummary:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    record = json.loads(_checkpoint_metadata(final_checkpoint(run_dir)).get("record", "{}"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    valid = [r["valid_loss"] for r in rows if r.get("valid_loss") is not None and r["step"] <= config["max_steps"]]
    rows = [r for r in logged_steps(run_dir) if r["step"] <= config["max_steps"]]
    data_file = DATA_FILES[config["stage"]]
    manifest = data_dir / "manifest.json"
    outputs = json.loads(manifest.read_text()).get("outputs", {}) if manifest.is_file() else {}
    return StageSummary(
        run=run_dir.name, method=config["method"], stage=config["stage"], steps=rows[-1]["step"],
        samples_seen=rows[-1]["samples_seen"], train_seconds=sum(r["step_s"] for r in rows),
        final_loss=sum(r["loss"] for r in rows[-10:]) / len(rows[-10:]), valid_loss=valid[-1] if valid else None,
        machine=record.get("machine"), torch=record.get("torch"), data_file=data_file,
        data_sha256=outputs.get(data_file, {}).get("sha256"), config=config, precision=record.get("precision"),
    )


EARLIER = "earlier"  # a published checkpoint's stages and logs, kept by the chain that started from it


def earlier_card(stages: list[StageSummary]) -> tuple[Path, dict] | None:
    """The published checkpoint a chain's first run started from (`init_from` a dir with a card), and its card.

    Its stages come first in the new card, so a chain that goes on from a published checkpoint (whose
    runs are gone) still says every sample it was trained on.
    """
    init_from = stages[0].config.get("init_from")
    card = read_card(init_from) if init_from else None
    if card is None:
        return None
    ours = {s.config.get("out_dir") for s in stages}
    if any(s["config"].get("out_dir") in ours for s in card["stages"]):
        raise ValueError(f"{init_from} already holds the runs {sorted(ours)}: it was published from them, "
                         "so they cannot go on from it (`publish --republish` rewrites a published card)")
    return Path(init_from), card


def heldout_reconstruction(cc, method: str, data_dir: Path, samples: int, length: int, seed: int,
                           no_repeat_ngram: int = NO_REPEAT_NGRAM) -> dict[str, Any]:
    """Greedy reconstruction of `samples` validation windows of `length` tokens (+16 new tokens at most),
    scored as `python -m icformer evaluate` scores its reconstructions: mean BLEU, token accuracy, CE; and
    `bleu_no_repeat`, the same vectors decoded greedy without repeating an n-gram of `no_repeat_ngram` tokens
    (None for 0): plain greedy is the paper's decoding, the block shows what a looping decode leaves out."""
    from .files import read_jsonl
    from .evaluate import Method, TextSource, encode_timed, generate_batch, reconstruction_ce
    from .metrics import sentence_bleu
    from .prompts import prompt_style, reconstruction_layout

    text = TextSource(read_jsonl(data_dir / "pretrain_valid.jsonl"), cc.tokenizer)
    rng = random.Random(f"{seed}:publish")
    windows = [text.window(length, rng) for _ in range(samples)]
    runner = Method(method, cc, method)
    layout = reconstruction_layout(cc.tokenizer, prompt_style(runner.model))
    vectors = [encode_timed(runner, ids)[0] for ids in windows]
    prompts = [(runner.model, layout, v) for v in vectors]
    outputs = generate_batch(cc, prompts, length + 16)
    blocked = generate_batch(cc, prompts, length + 16, no_repeat_ngram=no_repeat_ngram) if no_repeat_ngram else None
    scores = []
    for i, (ids, (out_ids, out_text)) in enumerate(zip(windows, outputs)):
        reference = cc.tokenizer.decode(ids, skip_special_tokens=True).strip()
        scores.append(dict(text=out_text, bleu=sentence_bleu(out_text, reference),
                           bleu_no_repeat=None if blocked is None else sentence_bleu(blocked[i][1], reference),
                           token_accuracy=sum(a == b for a, b in zip(out_ids, ids)) / len(ids),
                           ce=reconstruction_ce(runner, ids, len(ids))))
    mean = lambda key: sum(s[key] for s in scores) / len(scores)  # noqa: E731
    return dict(samples=samples, length=length, seed=seed, bleu=mean("bleu"), token_accuracy=mean("token_accuracy"),
                ce=mean("ce"), example=scores[0]["text"][:300], no_repeat_ngram=no_repeat_ngram,
                bleu_no_repeat=None if blocked is None else mean("bleu_no_repeat"))


TRAINING_RECORD = "training_run.json"  # written beside the runs by scripts/gpu_train.sh run
NOTE_NAME = "NOTE.md"  # beside the runs: what their logs cannot say (e.g. a run resumed by hand), copied into the cards


def _card(name: str, stages: list[StageSummary], reconstruction: dict[str, Any] | None,
          training_run: dict[str, Any] | None, note: str | None = None) -> str:
    last = stages[-1]
    k, L = last.config["num_digest_tokens"], last.config["chunk_size"]
    caveat = "This is a short CPU schedule, far below the paper's training; expect weak reconstructions and answers."
    went_on = any(s.run.startswith(f"{EARLIER}/") for s in stages)
    earlier = (f"going on\nfrom an earlier published checkpoint (the `{EARLIER}/` stages, whose logs are in "
               f"logs/{EARLIER}/), ")
    if training_run is None and went_on:
        how = ("Trained in the stages below with `python -m icformer train` (each stage's config in logs/), "
               f"{earlier}on the data of `python -m icformer prepare-data`;\nthis card was written by "
               "`python -m icformer publish` from the logs beside it.")
    elif training_run is None:
        how = ("Trained with `scripts/train_default.sh`\non the data of `python -m icformer prepare-data`; "
               "this card was written by `python -m icformer publish`\nfrom the logs beside it.")
    else:
        r = training_run
        how = (f"Trained with `{r['command']}` (commit {r['commit']}) on {r['machine']},\n"
               f"{r['started']}, {earlier if went_on else ''}on the data of `python -m icformer prepare-data`; "
               "this card was written by "
               f"`python -m icformer publish`\nfrom the logs beside it.")
        caveat = (f"Each stage ran under a wall-clock budget ({', '.join(f'{run} {b:.0f} s' for run, b in r['budgets_s'].items())});"
                  " card.json's training_run has the throughput and how each stage ended.")
    lines = [
        f"# {name}: {'IC-Former' if last.method == 'icformer' else 'ICAE'} for SmolLM2-135M-Instruct (embedded default)",
        "",
        f"{k} vectors per {L} context tokens ({L // k}x compression). {how}",
        "Quality in context: `assets/results/` (`python -m icformer evaluate`).",
        "",
        "| stage | run | steps | samples seen | training time | precision | final train loss | last valid loss "
        "| data (sha256) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    precisions = {"bf16": "bf16 autocast", "no": "fp32"}
    for s in stages:
        valid = "n/a" if s.valid_loss is None else f"{s.valid_loss:.3f}"
        lines.append(f"| {s.stage} | {s.run} | {s.steps} | {s.samples_seen} | {s.train_seconds / 60:.1f} min | "
                     f"{precisions.get(s.precision or '', 'not recorded')} | {s.final_loss:.3f} | {valid} | "
                     f"{s.data_file} ({(s.data_sha256 or 'unknown')[:12]}) |")
    machines = sorted({f"{s.machine or 'machine not recorded'}, torch {s.torch or '?'}" for s in stages})
    lines += ["", f"Machine: {'; '.join(machines)}. Training time is the sum of logged step times; "
              "precision is the one the stage's last checkpoint ran under.", "",
              "Weights: bfloat16, rounded from the float32 weights training ended with (loading upcasts them to "
              "the model's dtype).", ""]
    if reconstruction is None:
        lines.append("Held-out reconstruction: not measured (fine-tuned only; its [AE] vector was never trained).")
    else:
        r = reconstruction
        lines += [f"Held-out reconstruction of the published weights ({r['samples']} validation windows of "
                  f"{r['length']} tokens, greedy, seed {r['seed']}): BLEU {r['bleu']:.4f}, token accuracy "
                  f"{r['token_accuracy']:.3f}, cross-entropy {r['ce']:.3f} nats/token."
                  + (f" Greedy without repeating a {r['no_repeat_ngram']}-gram (not the paper's decoding): BLEU "
                     f"{r['bleu_no_repeat']:.4f}." if r.get("bleu_no_repeat") is not None else ""), "",
                  f"First reconstruction: {r['example']!r}"]
    lines += ["", "Deviations from the paper's recipe are named in each stage's config (logs/*.yaml), in "
              f"configs/train/ and in docs/learning.md. {caveat}"]
    if note:
        lines += ["", "## How it was made", "", note.strip()]
    return "\n".join(lines) + "\n"


def _finish(staging: Path, dest: Path, name: str, stages: list[StageSummary], training_run: dict | None,
            data_dir: Path, samples: int, length: int, seed: int, device: str | None, note: str | None = None) -> dict:
    """Measure the staged checkpoint, write its cards, then swap it in for `dest`."""
    from .compressor import UntrainedWarning, build_compressor
    from .spec import CompressorSpec

    method = stages[-1].method
    reconstruction = None
    if any(s.stage == "pretrain" for s in stages):  # only pre-training teaches the [AE] vector
        with warnings.catch_warnings():  # the other method's seeded random stand-in; this one is trained
            warnings.simplefilter("ignore", UntrainedWarning)
            spec = CompressorSpec(llm=stages[-1].config.get("llm"), device=device, **{method: staging})  # as trained
            cc = build_compressor(spec)
        reconstruction = heldout_reconstruction(cc, method, data_dir, samples, length, seed)
    card = dict(name=name, weights_sha256=sha256_file(staging / WEIGHTS_NAME), weights_dtype=str(PUBLISHED_DTYPE).removeprefix("torch."),
                stages=[asdict(s) for s in stages], training_run=training_run, heldout_reconstruction=reconstruction,
                note=note)
    (staging / CARD_JSON).write_text(json.dumps(card, indent=1) + "\n")
    (staging / CARD_NAME).write_text(_card(name, stages, reconstruction, training_run, note))
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return card


def _staging(dest: Path) -> Path:
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def publish(runs_dir: Path, assets_dir: Path, data_dir: Path, names: list[str] | None = None, *,
            samples: int = 8, length: int = 128, seed: int = 0, device: str | None = None) -> dict[str, dict]:
    """Copy each finished chain's final weights (bf16), logs and a fresh model card into assets_dir/checkpoints/.

    A `training_run.json` beside the runs (scripts/gpu_train.sh writes one) and a NOTE.md go into the cards.
    """
    names = names or list(FINAL_RUNS)
    unknown = sorted(set(names) - set(FINAL_RUNS))
    if unknown:
        raise ValueError(f"unknown checkpoint names {unknown}; choose from {sorted(FINAL_RUNS)}")
    chains = {n: [summarise_stage(runs_dir / run, data_dir) for run in chain_runs(runs_dir, FINAL_RUNS[n])]
              for n in names}  # all checked first
    earlier = {n: earlier_card(stages) for n, stages in chains.items()}
    record = runs_dir / TRAINING_RECORD
    training_run = json.loads(record.read_text()) if record.is_file() else None
    note = (runs_dir / NOTE_NAME).read_text() if (runs_dir / NOTE_NAME).is_file() else None
    cards = {}
    for name, stages in chains.items():
        dest = assets_dir / "checkpoints" / name
        staging, final = _staging(dest), final_checkpoint(runs_dir / FINAL_RUNS[name])
        if not (final / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{final} has no weights to publish")
        shutil.copytree(final, staging, ignore=shutil.ignore_patterns(WEIGHTS_NAME))
        write_bf16_weights(final / WEIGHTS_NAME, staging / WEIGHTS_NAME)
        (staging / "logs").mkdir(exist_ok=True)
        for stage in stages:
            shutil.copy(runs_dir / stage.run / "metrics.jsonl", staging / "logs" / f"{stage.run}.metrics.jsonl")
            shutil.copy(runs_dir / stage.run / "config.yaml", staging / "logs" / f"{stage.run}.yaml")
        if earlier[name] is not None:
            source, card = earlier[name]
            shutil.copytree(source / "logs", staging / "logs" / EARLIER)
            if card.get("note"):
                (staging / "logs" / EARLIER / NOTE_NAME).write_text(card["note"])
            stages = [StageSummary(**{**s, "run": f"{EARLIER}/{s['run']}"}) for s in card["stages"]] + stages
        cards[name] = _finish(staging, dest, name, stages, training_run, data_dir, samples, length, seed, device, note)
    return cards


def republish(assets_dir: Path, data_dir: Path, names: list[str] | None = None, *, samples: int = 8,
              length: int = 128, seed: int = 0, device: str | None = None) -> dict[str, dict]:
    """Rewrite checkpoints already in assets_dir from their own card.json, without their runs:
    bf16 weights, the reconstruction measured again on them, a card in the current format."""
    names = names or list(FINAL_RUNS)
    found = {n: read_card(assets_dir / "checkpoints" / n) for n in names}
    missing = sorted(n for n, card in found.items() if card is None)
    if missing:
        raise ValueError(f"no published checkpoint with a {CARD_JSON} for {missing} under {assets_dir / 'checkpoints'}")
    cards = {}
    for name, card in found.items():
        dest = assets_dir / "checkpoints" / name
        staging = _staging(dest)
        shutil.copytree(dest, staging)
        write_bf16_weights(staging / WEIGHTS_NAME, staging / WEIGHTS_NAME)
        stages = [StageSummary(**s) for s in card["stages"]]
        cards[name] = _finish(staging, dest, name, stages, card.get("training_run"), data_dir, samples, length,
                              seed, device, card.get("note"))
    return cards


def read_card(directory: str | Path | None) -> dict | None:
    """The card `publish` wrote beside a checkpoint; None for random weights or other sources."""
    path = Path(directory) / CARD_JSON if directory is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def card_summary(card: dict) -> str:
    """One line for a UI: how much training went in, where, and how well it reconstructs."""
    stages = card["stages"]
    samples = " + ".join(f"{s['samples_seen']:,} {s['stage']}" for s in stages)
    minutes = sum(s["train_seconds"] for s in stages) / 60
    machine = " and ".join(dict.fromkeys(s.get("machine") or "a machine not recorded" for s in stages))
    rec = card.get("heldout_reconstruction")
    bleu = f"held-out reconstruction BLEU {rec['bleu']:.3f}" if rec else "reconstruction not measured"
    return f"{samples} samples, {minutes:.0f} min on {machine}; {bleu}"
