"""The learning gates on the tiny Llama: the swap gap, the window readout, memorisation, the CLI."""

import argparse
import json

import pytest
import torch

from icformer.diagnose import FreeVectors, context_use, format_results, memorise, run_gates
from icformer.objectives import CompressionObjective, WindowReadout, autoencoding_example

from .conftest import TINY_K, TINY_L, TRAIN_PROSE, make_tiny_icformer


def _windows(target, n=4):
    return [target.tokenizer(t, add_special_tokens=False)["input_ids"][:TINY_L] for t in TRAIN_PROSE[:n]]


def test_swap_gap_is_zero_when_vectors_ignore_the_context_and_positive_when_they_carry_it(tiny_target):
    windows = _windows(tiny_target)
    examples = [autoencoding_example(tiny_target.tokenizer, w) for w in windows]
    constant = FreeVectors(TINY_K, tiny_target.hidden_size, scale=0.1)
    use = context_use(CompressionObjective(constant, tiny_target), examples)
    assert use.samples == 4 and abs(use.gap) < 1e-6 and use.own_loss == pytest.approx(use.swapped_loss)
    # Vectors fitted to each window on their own carry that window: another window's read worse.
    fitted = _PerWindowVectors(windows, tiny_target.hidden_size)
    objective = CompressionObjective(fitted, tiny_target)
    optimizer = torch.optim.Adam(fitted.parameters(), lr=5e-2)
    for _ in range(30):
        loss, _ = objective(examples)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    use = context_use(objective, examples)
    assert use.gap > 0.005  # a random tiny LLM reads prompts weakly: small but real


class _PerWindowVectors(FreeVectors):
    """One set of free vectors per known window: information about the window, and nothing else."""

    def __init__(self, windows, hidden_size):
        super().__init__(TINY_K, hidden_size, scale=0.1)
        self.keys = [list(w) for w in windows]
        self.table = torch.nn.Parameter(torch.randn(len(windows), TINY_K, hidden_size) * 0.1)

    def encode(self, ids, embed):
        return [self.table[self.keys.index(list(i))] for i in ids]


def test_context_use_with_the_readout_counts_the_llm_loss_of_contexts_of_different_lengths(tiny_target):
    ids = [tiny_target.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TRAIN_PROSE[:2]]
    examples = [autoencoding_example(tiny_target.tokenizer, ids[0][:TINY_L]),
                autoencoding_example(tiny_target.tokenizer, (ids[0] + ids[1])[: 2 * TINY_L])]  # 1 and 2 chunks
    objective = CompressionObjective(make_tiny_icformer(tiny_target), tiny_target, readout_weight=1.0)
    plain = CompressionObjective(objective.compressor, tiny_target)
    use, without = context_use(objective, examples), context_use(plain, examples)
    assert use.own_loss == pytest.approx(without.own_loss) and use.swapped_loss == pytest.approx(without.swapped_loss)


def test_context_use_needs_two_samples(tiny_target):
    example = autoencoding_example(tiny_target.tokenizer, _windows(tiny_target, 1)[0])
    with pytest.raises(ValueError, match="at least 2"):
        context_use(CompressionObjective(make_tiny_icformer(tiny_target), tiny_target), [example])


def test_window_readout_maps_every_token_to_its_own_digest_and_learns(tiny_target):
    readout = WindowReadout(tiny_target.hidden_size, k=TINY_K, chunk_size=TINY_L)
    triples = readout.targets(20)  # two chunks of 10: digests own 2 or 3 tokens each
    assert sorted(p for _, _, p in triples) == list(range(20))
    assert {row for row, _, _ in triples} == set(range(2 * TINY_K))
    model = make_tiny_icformer(tiny_target)
    objective = CompressionObjective(model, tiny_target, readout_weight=1.0)
    example = autoencoding_example(tiny_target.tokenizer, _windows(tiny_target, 1)[0])
    optimizer = torch.optim.Adam(list(model.parameters()) + list(objective.readout.parameters()), lr=1e-2)
    losses = []
    for _ in range(5):
        vectors = objective.encode([example])
        loss = objective.readout(vectors, [example.context_ids], tiny_target.model.lm_head)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0]


def test_window_readout_is_refused_for_icae(tiny_target):
    icae = torch.nn.Module()
    icae.method = "icae"  # only the method is read; a real ICAE would wrap the shared tiny LLM in LoRA
    with pytest.raises(ValueError, match="IC-Former option"):
        CompressionObjective(icae, tiny_target, readout_weight=1.0)


class _RawContext(FreeVectors):
    """The context's own token embeddings as its "vectors": what the teacher of the hidden distance reads."""

    def encode(self, ids, embed):
        return [embed(torch.tensor(i)) for i in ids]


def test_hidden_distance_is_zero_for_the_raw_context_and_pulls_other_vectors_towards_it(tiny_target):
    examples = [autoencoding_example(tiny_target.tokenizer, w) for w in _windows(tiny_target, 2)]
    raw = CompressionObjective(_RawContext(TINY_K, tiny_target.hidden_size, scale=0.1), tiny_target, hidden_weight=1.0)
    loss, _ = raw.train()(examples)
    assert raw.parts["hidden_distance"] < 1e-6 and loss.item() == pytest.approx(raw.parts["llm_loss"].item())
    free = FreeVectors(TINY_K, tiny_target.hidden_size, scale=0.1)
    objective = CompressionObjective(free, tiny_target, hidden_weight=1.0).train()
    optimizer = torch.optim.Adam(free.parameters(), lr=5e-2)
    distances = []
    for _ in range(5):
        loss, _ = objective(examples)
        distances.append(objective.parts["hidden_distance"].item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert distances[0] > 0.01 and distances[-1] < distances[0]
    with torch.no_grad():
        objective.eval()(examples)
    assert "hidden_distance" not in objective.parts  # held-out scores are the LLM's loss alone


def test_memorise_reports_the_steps_to_reach_the_threshold(tiny_target):
    window = _windows(tiny_target, 1)[0]
    free = FreeVectors(TINY_K, tiny_target.hidden_size, scale=0.1)
    never = memorise(free, tiny_target, window, steps=3, lr=1e-2, threshold=0.0)
    assert never.steps_to_threshold is None and never.final_loss < never.first_loss
    at_once = memorise(free, tiny_target, window, steps=3, lr=1e-2, threshold=100.0)
    assert at_once.steps_to_threshold == 0


def test_gates_print_a_table_per_gate_and_leave_the_checkpoint_untouched(tiny_target):
    model = make_tiny_icformer(tiny_target, local_window_layers=1).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = argparse.Namespace(gates=["memorise", "context", "locality"], steps=2, lr=1e-3, free_lr=1e-2, threshold=1.0)
    results = run_gates(tiny_target, model, _windows(tiny_target), args)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(results["locality"]) == model.config.num_layers and len(results["memorise"]) == 2
    text = format_results(json.loads(json.dumps(results)))
    assert "swap gap" in text and "| free |" in text and "| icformer |" in text and "| 2 |" in text


def test_training_logs_the_swap_gap_and_token_accuracy(tmp_path, train_data, tiny_target):
    from icformer.train import train

    from .conftest import tiny_train_config

    cfg = tiny_train_config(tmp_path, train_data, local_window_layers=1, readout_weight=0.5)
    train(cfg, target=tiny_target)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in log if "valid_loss" in row]
    assert evaluated and {"valid_swapped_loss", "valid_swap_gap", "valid_token_acc"} <= set(evaluated[-1])
    assert {"llm_loss", "readout_loss"} <= set(log[1])  # each term of the mixed loss is logged (after step 0's scores)
    config = json.loads((tmp_path / "run" / "checkpoint-4" / "model" / "config.json").read_text())
    assert config["local_window_layers"] == 1  # the option is recorded in the checkpoint


def test_cli_runs_the_gates_on_a_checkpoint(tiny_target, tiny_llm_dir, tmp_path, capsys):
    from icformer.cli import main

    make_tiny_icformer(tiny_target).save_pretrained(tmp_path / "ckpt")
    data = tmp_path / "data"
    data.mkdir()
    (data / "pretrain_valid.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TRAIN_PROSE))
    code = main(["diagnose", "--llm", str(tiny_llm_dir), "--icformer", str(tmp_path / "ckpt"), "--data-dir", str(data),
                 "--samples", "3", "--steps", "1", "--json"])
    results = json.loads(capsys.readouterr().out)
    assert code == 0 and results["context"]["samples"] == 3 and set(results) == {"memorise", "context", "locality"}
    assert main(["diagnose", "--llm", str(tiny_llm_dir), "--icformer", str(tmp_path / "ckpt"),
                 "--data-dir", str(tmp_path / "nowhere")]) == 2  # a clear error, not a traceback


def test_the_window_readout_resumes_and_carries_into_a_stage_started_from_the_checkpoint(tmp_path, train_data, tiny_target):
    from icformer.train import STATE_NAME, load_objective_extras, train

    from .conftest import tiny_train_config

    train(tiny_train_config(tmp_path, train_data, readout_weight=1.0, llm_weight=0.0), target=tiny_target)
    saved = torch.load(tmp_path / "run" / "checkpoint-4" / STATE_NAME, weights_only=True)["objective_extras"]
    assert not torch.equal(saved["readout.maps"], torch.eye(tiny_target.hidden_size).repeat(4, 1, 1))  # it learnt
    objective = CompressionObjective(make_tiny_icformer(tiny_target), tiny_target, readout_weight=1.0)
    load_objective_extras(tmp_path / "run" / "checkpoint-4", objective)
    assert torch.equal(objective.readout.maps, saved["readout.maps"])
    later = tiny_train_config(tmp_path / "next", train_data, readout_weight=1.0,
                              init_from=str(tmp_path / "run" / "checkpoint-4" / "model"), max_steps=2)
    assert "valid_swap_gap" in train(later, target=tiny_target)


def test_an_objective_that_learns_nothing_is_refused(tiny_target):
    with pytest.raises(ValueError, match="nothing is learnt"):
        CompressionObjective(make_tiny_icformer(tiny_target), tiny_target, llm_weight=0.0)


def test_logged_gates_table_every_evaluation_of_the_runs(tmp_path, capsys):
    from icformer.cli import main

    run = tmp_path / "run-a"
    run.mkdir()
    rows = [{"step": 1, "samples_seen": 4, "loss": 5.0},
            {"step": 2, "samples_seen": 8, "loss": 4.0, "valid_loss": 3.5, "valid_swapped_loss": 3.75,
             "valid_swap_gap": 0.25, "valid_token_acc": 0.4}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["diagnose", "--runs", str(run)]) == 0
    assert "| run-a | 2 | 8 | 3.500 | 3.750 | +0.250 | 0.400 |" in capsys.readouterr().out
    assert main(["diagnose", "--runs", str(tmp_path / "nothing")]) == 2


def test_cli_context_gate_reads_windows_of_several_chunks(tiny_target, tiny_llm_dir, tmp_path, capsys):
    from icformer.cli import main

    make_tiny_icformer(tiny_target).save_pretrained(tmp_path / "ckpt")
    data = tmp_path / "data"
    data.mkdir()
    long_texts = [" ".join(TRAIN_PROSE[i:i + 3]) for i in range(3)]  # each well over two chunks of TINY_L
    (data / "pretrain_valid.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in long_texts))
    common = ["diagnose", "--llm", str(tiny_llm_dir), "--icformer", str(tmp_path / "ckpt"), "--data-dir", str(data),
              "--gates", "context", "--json"]
    assert main(common + ["--length", str(2 * TINY_L)]) == 0
    two_chunks = json.loads(capsys.readouterr().out)["context"]
    assert main(common) == 0
    one_chunk = json.loads(capsys.readouterr().out)["context"]
    assert two_chunks["samples"] == one_chunk["samples"] == 3
    assert two_chunks["own_loss"] != one_chunk["own_loss"]  # the longer windows were scored, not the first chunk
    assert main(common + ["--length", "100000"]) == 2  # no text that long: a clear error
