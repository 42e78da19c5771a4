"""Training on the tiny Llama: loss goes down, resume is bit-exact, fine-tuning and KL run."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from icformer.train import SampleStream, TrainConfig, logged_steps, make_scheduler, time_decay, train

from .conftest import tiny_train_config

def weights(run_dir, step):
    return load_file(str(run_dir / f"checkpoint-{step}" / "model" / "model.safetensors"))


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path, tiny_target):
    data = tmp_path / "fixed"
    data.mkdir()
    rows = "".join(json.dumps({"text": t}) + "\n" for t in ["The fox waited.", "A lamp burned."])
    for name in ("pretrain_train.jsonl", "pretrain_valid.jsonl"):
        (data / name).write_text(rows)  # shorter than L: every step sees exactly these two samples
    cfg = tiny_train_config(tmp_path, data, lr=1e-2, max_steps=10, grad_accum=1, save_every=100)
    train(cfg, target=tiny_target)
    start, *log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert start["step"] == start["samples_seen"] == 0 and "valid_loss" in start and "loss" not in start
    assert len(log) == 10 and {"loss", "lr", "grad_norm", "tokens_per_s", "samples_seen"} <= set(log[0])
    assert log[-1]["loss"] < log[0]["loss"] - 0.03  # a random tiny LLM is near-uniform: small but real
    assert "valid_loss" in log[-1] and log[-1]["grad_norm"] > 0
    assert log[-1]["valid_loss"] < start["valid_loss"]  # the valid rows are the training rows here


def test_a_run_first_scores_where_it_starts(tmp_path, train_data, tiny_target):
    """A run that goes on from another's weights logs, at step 0, the held-out loss that run ended with."""
    train(tiny_train_config(tmp_path / "a", train_data), target=tiny_target)
    before = [json.loads(line) for line in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    init = str(tmp_path / "a" / "run" / "checkpoint-4" / "model")
    train(tiny_train_config(tmp_path / "b", train_data, init_from=init), target=tiny_target)
    after = [json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert after[0]["step"] == 0 and after[0]["valid_loss"] == pytest.approx(before[-1]["valid_loss"], abs=1e-5)
    assert after[0]["valid_loss"] != pytest.approx(before[0]["valid_loss"], abs=1e-3)  # not the random start


def test_interrupted_and_resumed_run_ends_bit_exact(tmp_path, train_data, tiny_target):
    straight = tiny_train_config(tmp_path / "a", train_data)
    train(straight, target=tiny_target)
    resumed = tiny_train_config(tmp_path / "b", train_data)
    train(resumed, target=tiny_target, stop_after=3)
    assert not (tmp_path / "b" / "run" / "checkpoint-4").exists()
    train(resumed, target=tiny_target, resume=True)
    a, b = weights(tmp_path / "a" / "run", 4), weights(tmp_path / "b" / "run", 4)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    log = [json.loads(x)["step"] for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log == [0, 1, 2, 3, 4]  # the start is scored once, not again on resume


def test_checkpoint_marks_trained_only_when_the_schedule_is_complete(tmp_path, train_data, tiny_target):
    from icformer import ICFormerModel

    train(tiny_train_config(tmp_path, train_data), target=tiny_target)
    assert ICFormerModel.from_pretrained(tmp_path / "run" / "checkpoint-4" / "model").trained is True
    assert ICFormerModel.from_pretrained(tmp_path / "run" / "checkpoint-2" / "model").trained is False


def test_finetune_from_pretrained_with_kl(tmp_path, train_data, tiny_target):
    train(tiny_train_config(tmp_path, train_data, max_steps=2), target=tiny_target)
    cfg = tiny_train_config(tmp_path, train_data, stage="finetune", kl_weight=0.5, max_steps=2,
                 init_from=str(tmp_path / "run" / "checkpoint-2" / "model"), out_dir=str(tmp_path / "ft"))
    row = train(cfg, target=tiny_target)
    assert row["step"] == 2 and row["loss"] > 0
    # a finished fine-tuning resumed from a later pre-training checkpoint would keep the old weights
    later = dataclasses.replace(cfg, max_steps=3, init_from=str(tmp_path / "run" / "checkpoint-1" / "model"))
    with pytest.raises(ValueError, match="started from init_from"):
        train(later, target=tiny_target, resume=True)
    assert train(dataclasses.replace(cfg, max_steps=3), target=tiny_target, resume=True)["step"] == 3


def test_decay_steps_take_the_rate_linearly_to_zero_at_max_steps():
    config = TrainConfig(lr=1.0, warmup_steps=2, max_steps=10, decay_steps=4)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler, rates = make_scheduler(optimizer, config), []
    for _ in range(config.max_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    for bad in (dict(decay_steps=9), dict(decay_steps=-1), dict(decay_steps=4, schedule="cosine")):
        with pytest.raises(ValueError, match="decay_steps"):
            TrainConfig.from_sources(None, None, warmup_steps=2, max_steps=10, **bad)


def test_decay_s_takes_the_rate_to_zero_at_the_time_budget(tmp_path, train_data, tiny_target):
    config = TrainConfig(time_budget_s=100.0, decay_s=40.0)
    assert [time_decay(config, t) for t in (0, 60, 80, 100, 130)] == pytest.approx([1, 1, 0.5, 0, 0])
    assert time_decay(TrainConfig(time_budget_s=100.0), 99) == 1.0
    for bad in (dict(decay_s=5.0), dict(decay_s=50.0, time_budget_s=10.0), dict(decay_s=5.0, time_budget_s=10.0,
                schedule="cosine"), dict(decay_s=5.0, time_budget_s=10.0, decay_steps=2, max_steps=10)):
        with pytest.raises(ValueError, match="decay_s"):
            TrainConfig.from_sources(None, None, **bad)
    # A whole decay over a budget the run never reaches: every logged rate is below the last one, and below lr.
    cfg = tiny_train_config(tmp_path, train_data, lr=1e-3, time_budget_s=3600.0, decay_s=3600.0)
    train(cfg, target=tiny_target)
    rates = [row["lr"] for row in logged_steps(tmp_path / "run")]
    assert len(rates) == cfg.max_steps and all(b < a < 1e-3 for a, b in zip(rates, rates[1:]))


def test_config_sources_and_errors(tmp_path):
    cfg = TrainConfig.from_sources("cpu-pretrain", None, lr=1e-3)
    assert cfg.num_digest_tokens == 32 and cfg.chunk_size == 128 and cfg.lr == 1e-3
    paper = TrainConfig.from_sources("paper-pretrain")
    assert (paper.num_digest_tokens, paper.chunk_size, paper.grad_accum, paper.max_steps) == (128, 512, 16, 9300)
    assert paper.output_norm_init == 1.0 and paper.digest_init_std == 0.0  # no deviations in the paper preset
    assert (paper.local_window_layers, paper.readout_weight, paper.llm_weight, paper.hidden_weight) == (0, 0.0, 1.0, 0.0)
    warmup = TrainConfig.from_sources("cpu-warmup")
    assert (warmup.local_window_layers, warmup.readout_weight, warmup.llm_weight) == (3, 1.0, 0.0)
    with pytest.raises(ValueError, match="IC-Former options"):
        TrainConfig.from_sources("cpu-warmup", None, method="icae")
    with pytest.raises(ValueError, match="IC-Former options"):
        TrainConfig.from_sources("cpu-pretrain", None, method="icae", local_window_layers=0, hidden_weight=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        TrainConfig.from_sources("cpu-pretrain", None, eval_samples=1)
    with pytest.raises(FileNotFoundError, match="presets"):
        TrainConfig.from_sources("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_sources(None, str(bad))


def test_short_window_ratio_mixes_one_chunk_windows_among_the_long_ones(tmp_path, tiny_target):
    text = " ".join(["The river ran slowly past the mill toward the sea."] * 12)  # well over 64 tokens
    lengths = lambda **o: [len(SampleStream([{"text": text}], tiny_target.tokenizer, tiny_train_config(  # noqa: E731
        tmp_path, tmp_path, context_tokens=64, **o)).example(i).context_ids) for i in range(40)]
    assert set(lengths()) == {64}
    mixed = lengths(short_window_ratio=0.5)
    assert set(mixed) == {16, 64} and 10 < mixed.count(16) < 30  # chunk_size 16
    for bad in (dict(short_window_ratio=1.0, context_tokens=64), dict(short_window_ratio=0.5),
                dict(short_window_ratio=0.5, context_tokens=64, stage="finetune")):
        with pytest.raises(ValueError, match="short_window_ratio"):
            TrainConfig.from_sources(None, None, chunk_size=16, **bad)


def test_ae_ratio_turns_whole_fine_tuning_micro_batches_into_autoencoding(tmp_path, tiny_target):
    rows = [{"input": " ".join(["The river ran past the mill."] * 8), "prompt": "Where?", "answer": "mill"}] * 3
    stream = lambda **o: SampleStream(rows, tiny_target.tokenizer, tiny_train_config(  # noqa: E731
        tmp_path, tmp_path, stage="finetune", batch_size=4, **o))
    tasks = lambda s: [s.example(i).layout.task for i in range(80)]  # noqa: E731
    assert set(tasks(stream())) == {"FT"}
    mixed = tasks(stream(ae_ratio=0.5))
    batches = [set(mixed[b : b + 4]) for b in range(0, 80, 4)]
    assert all(len(b) == 1 for b in batches) and 4 < batches.count({"AE"}) < 16  # one task per micro-batch
    ae = stream(ae_ratio=0.5, context_tokens=24).example(mixed.index("AE"))
    assert len(ae.context_ids) == 24 and ae.target_ids[:-1] == ae.context_ids
    with pytest.raises(ValueError, match="ae_ratio"):
        TrainConfig.from_sources(None, None, stage="finetune", ae_ratio=0.5, kl_weight=1.0)
    with pytest.raises(ValueError, match="ae_ratio"):
        TrainConfig.from_sources(None, None, ae_ratio=0.5)  # pre-training autoencodes already


def test_fine_tuning_with_ae_ratio_is_evaluated_on_its_questions_alone(tmp_path, train_data, tiny_target, monkeypatch):
    import icformer.train as training

    seen = []
    def recording(objective, examples):
        seen.extend(e.layout.task for e in examples)
        return context_use(objective, examples)
    context_use = training.context_use
    monkeypatch.setattr(training, "context_use", recording)
    train(tiny_train_config(tmp_path, train_data, stage="finetune", ae_ratio=0.9), target=tiny_target)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert seen and set(seen) == {"FT"} and "valid_loss" in log[-1]


def test_missing_data_names_the_fix(tmp_path, tiny_target):
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        train(tiny_train_config(tmp_path, tmp_path / "nowhere"), target=tiny_target)


@pytest.mark.slow
def test_two_process_ddp_agrees_with_one_process(tmp_path, train_data, tiny_llm_dir):
    """torchrun + accelerate (gloo on CPU): 2 ranks x batch 1 == 1 rank x batch 2."""
    import os
    import subprocess
    import sys

    common = ["-m", "icformer", "train", "--llm", str(tiny_llm_dir), "--data-dir", str(train_data),
              "--num-digest-tokens", "4", "--chunk-size", "16", "--max-steps", "2", "--grad-accum", "2",
              "--eval-every", "100", "--save-every", "100", "--eval-samples", "2", "--digest-init-std", "0.02",
              "--mixed-precision", "no"]  # fp32: bf16 rounding would differ with the batch split
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    subprocess.run(torchrun + common + ["--out", str(tmp_path / "ddp"), "--batch-size", "1"], env=env, check=True)
    subprocess.run([sys.executable] + common + ["--out", str(tmp_path / "one"), "--batch-size", "2"], env=env, check=True)
    ddp, one = weights(tmp_path / "ddp", 2), weights(tmp_path / "one", 2)
    from icformer.train import TrainConfig, build_model
    from icformer.llm import load_llm

    init = build_model(TrainConfig(num_digest_tokens=4, chunk_size=16, digest_init_std=0.02),
                            load_llm(str(tiny_llm_dir))).state_dict()
    moved = max((one[k] - init[k]).abs().max().item() for k in one)
    apart = max((one[k] - ddp[k]).abs().max().item() for k in one)
    assert moved > 0 and apart < 0.1 * moved


def test_continue_from_goes_on_from_another_runs_checkpoint_as_a_resume_would(tmp_path, train_data, tiny_target):
    straight = tiny_train_config(tmp_path / "a", train_data, readout_weight=1.0)
    train(straight, target=tiny_target)
    first = tiny_train_config(tmp_path / "b", train_data, readout_weight=1.0)
    train(first, target=tiny_target, stop_after=2)
    second = tiny_train_config(tmp_path / "c", train_data, readout_weight=1.0,
                               continue_from=str(tmp_path / "b" / "run" / "checkpoint-2"))
    train(second, target=tiny_target)
    a, c = weights(tmp_path / "a" / "run", 4), weights(tmp_path / "c" / "run", 4)
    assert all(torch.equal(a[name], c[name]) for name in a)  # weights, optimizer, readout and samples went on
    log = [json.loads(line)["step"] for line in (tmp_path / "c" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log == [0, 1, 2, 3, 4]  # the history it continued, then its own steps
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        train(tiny_train_config(tmp_path / "d", train_data, continue_from=str(tmp_path)), target=tiny_target)


@pytest.mark.parametrize("method", ["icformer", "icae"])
def test_bf16_training_keeps_float32_weights_beside_a_bf16_llm(tmp_path, train_data, tiny_llm_dir, method):
    """Under bf16 autocast the LLM train loads is stored in bf16, and what is trained stays float32."""
    from icformer.compressors.checkpoint import read_checkpoint_metadata

    cfg = tiny_train_config(tmp_path, train_data, method=method, llm=str(tiny_llm_dir), mixed_precision="bf16",
                            max_steps=2, lora_r=2)
    row = train(cfg)
    assert torch.isfinite(torch.tensor([row["loss"], row["valid_loss"]])).all()
    saved = weights(tmp_path / "run", 2)
    assert {t.dtype for t in saved.values()} == {torch.float32}
    record = json.loads(read_checkpoint_metadata(tmp_path / "run" / "checkpoint-2" / "model" / "model.safetensors")
                        .get("record", "{}"))
    assert record.get("precision") == "bf16"


def test_auto_precision_takes_bf16_only_where_it_pays(monkeypatch):
    import icformer.train as training

    monkeypatch.setattr(training.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(training, "bf16_matmul_speedup", lambda: 8.0)
    assert training.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(training, "bf16_matmul_speedup", lambda: 1.0)
    assert training.resolve_precision("auto") == "no"
    assert training.resolve_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # an `accelerate launch` config decides
    monkeypatch.setattr(training, "bf16_matmul_speedup", lambda: 8.0)
    assert training.resolve_precision("auto") == "no"


def test_llm_attention_kernel_changes_speed_not_arithmetic_and_the_callers_model_keeps_its_own(
        tmp_path, train_data, tiny_target):
    own = tiny_target.model.config._attn_implementation
    runs = {}
    for kernel in ("eager", "sdpa"):
        train(tiny_train_config(tmp_path / kernel, train_data, llm_attention=kernel), target=tiny_target)
        assert tiny_target.model.config._attn_implementation == own
        runs[kernel] = weights(tmp_path / kernel / "run", 4)
    # Adam turns a rounding-sized gradient difference into a step-sized one on a near-zero gradient, so the
    # bound is a small share of one step (lr 3e-3): a wrong kernel moves weights by whole steps.
    for name, value in runs["eager"].items():
        torch.testing.assert_close(value, runs["sdpa"][name], rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")
    with pytest.raises(ValueError, match="llm_attention"):
        TrainConfig.from_sources(llm_attention="flash")


def test_auto_attention_is_eager_on_a_cpu_only():
    from icformer.train import resolve_attention

    assert resolve_attention("auto", torch.device("cpu")) == "eager"
    assert resolve_attention("auto", torch.device("cuda")) is None
    assert resolve_attention("sdpa", torch.device("cpu")) == "sdpa"
