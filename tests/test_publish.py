"""Publishing: finished runs become assets/checkpoints/<name>/ with a card computed from their logs."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from icformer import ICFormerModel
from icformer.compressors.checkpoint import read_checkpoint_metadata
from icformer.publish import card_summary, chain_runs, publish, read_card, republish
from icformer.train import train

from .conftest import tiny_train_config


def _chain(tmp_path, train_data, tiny_target, tiny_llm_dir, *, finish: bool = True):
    runs = tmp_path / "runs"
    common = dict(llm=str(tiny_llm_dir), max_steps=2, save_every=1, eval_every=1)
    pretrain = tiny_train_config(tmp_path, train_data, out_dir=str(runs / "icformer-pretrain"), **common)
    train(pretrain, target=tiny_target)
    finetune = tiny_train_config(tmp_path, train_data, out_dir=str(runs / "icformer-finetune"), stage="finetune",
                                 init_from=str(runs / "icformer-pretrain" / "checkpoint-2" / "model"), **common)
    train(finetune, target=tiny_target, stop_after=None if finish else 1)
    return runs


def test_publish_copies_the_final_weights_logs_and_a_card_computed_from_them(tmp_path, train_data, tiny_target,
                                                                              tiny_llm_dir):
    runs = _chain(tmp_path, train_data, tiny_target, tiny_llm_dir)
    cards = publish(runs, tmp_path / "assets", train_data, ["icformer"], samples=2, length=8)
    dest = tmp_path / "assets" / "checkpoints" / "icformer"
    final = runs / "icformer-finetune" / "checkpoint-2" / "model" / "model.safetensors"
    published, expected = load_file(str(dest / "model.safetensors")), load_file(str(final))
    assert published.keys() == expected.keys()
    assert all(published[k].dtype == torch.bfloat16 and torch.equal(published[k], expected[k].bfloat16()) for k in expected)
    loaded = ICFormerModel.from_pretrained(dest)  # a float32 model: the bf16 weights are upcast on load
    assert loaded.trained is True
    state = loaded.state_dict()
    assert all(state[k].dtype == torch.float32 and torch.equal(state[k], published[k].float()) for k in published)
    assert sorted(p.name for p in (dest / "logs").iterdir()) == [
        "icformer-finetune.metrics.jsonl", "icformer-finetune.yaml", "icformer-pretrain.metrics.jsonl",
        "icformer-pretrain.yaml"]

    card = json.loads((dest / "card.json").read_text())
    assert card["weights_dtype"] == "bfloat16" and card["training_run"] is None
    assert card["weights_sha256"] == hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest()
    assert card == json.loads(json.dumps(cards["icformer"]))
    log = [json.loads(x) for x in (runs / "icformer-finetune" / "metrics.jsonl").read_text().splitlines()]
    stage = card["stages"][1]
    assert (stage["stage"], stage["steps"], stage["samples_seen"]) == ("finetune", 2, log[-1]["samples_seen"])
    assert stage["train_seconds"] == pytest.approx(sum(r["step_s"] for r in log[1:]))  # log[0]: step 0's scores
    assert stage["machine"] and "CPU cores" in stage["machine"]
    assert stage["precision"] == "no" and "| fp32 |" in (dest / "README.md").read_text()  # the tiny runs' fp32
    rec = card["heldout_reconstruction"]
    assert rec["samples"] == 2 and 0.0 <= rec["bleu"] <= 1.0 and rec["ce"] > 0
    readme = (dest / "README.md").read_text()
    assert f"| finetune | icformer-finetune | 2 | {log[-1]['samples_seen']} |" in readme
    assert f"BLEU {rec['bleu']:.4f}" in readme and "Weights: bfloat16" in readme
    assert rec["no_repeat_ngram"] == 3 and 0.0 <= rec["bleu_no_repeat"] <= 1.0
    assert f"without repeating a 3-gram (not the paper's decoding): BLEU {rec['bleu_no_repeat']:.4f}" in readme
    assert card["note"] is None and "How it was made" not in readme


def test_a_note_beside_the_runs_goes_into_the_card(tmp_path, train_data, tiny_target, tiny_llm_dir):
    runs = _chain(tmp_path, train_data, tiny_target, tiny_llm_dir)
    (runs / "NOTE.md").write_text("The pre-training was resumed by hand at step 2.\n")
    card = publish(runs, tmp_path / "assets", train_data, ["icformer"], samples=1, length=8)["icformer"]
    readme = (tmp_path / "assets" / "checkpoints" / "icformer" / "README.md").read_text()
    assert card["note"].startswith("The pre-training") and "## How it was made" in readme and "by hand at step 2" in readme


def test_publish_puts_a_gpu_runs_record_in_the_card(tmp_path, train_data, tiny_target, tiny_llm_dir):
    runs = _chain(tmp_path, train_data, tiny_target, tiny_llm_dir)
    record = dict(command="scripts/gpu_train.sh run OUT", commit="abc1234", machine="NVIDIA H200",
                  started="2026-12-01T10:00:00Z", budgets_s={"icformer-pretrain": 200, "icformer-finetune": 90})
    (runs / "training_run.json").write_text(json.dumps(record))
    card = publish(runs, tmp_path / "assets", train_data, ["icformer"], samples=1, length=8)["icformer"]
    assert card["training_run"] == record
    readme = (tmp_path / "assets" / "checkpoints" / "icformer" / "README.md").read_text()
    assert "Trained with `scripts/gpu_train.sh run OUT` (commit abc1234) on NVIDIA H200" in readme
    assert "icformer-pretrain 200 s, icformer-finetune 90 s" in readme


def test_republish_rewrites_float32_checkpoints_in_bf16_from_their_own_cards(tmp_path, train_data, tiny_target,
                                                                            tiny_llm_dir):
    runs = _chain(tmp_path, train_data, tiny_target, tiny_llm_dir)
    assets = tmp_path / "assets"
    publish(runs, assets, train_data, ["icformer"], samples=1, length=8)
    dest = assets / "checkpoints" / "icformer"
    final = load_file(str(runs / "icformer-finetune" / "checkpoint-2" / "model" / "model.safetensors"))
    metadata = read_checkpoint_metadata(dest / "model.safetensors")
    save_file(final, str(dest / "model.safetensors"), metadata=metadata)  # as committed before bf16 publishing
    before = json.loads((dest / "card.json").read_text())
    (dest / "card.json").write_text(json.dumps({k: v for k, v in before.items() if k != "weights_dtype"}))
    card = republish(assets, train_data, ["icformer"], samples=1, length=8)["icformer"]
    weights = load_file(str(dest / "model.safetensors"))
    assert all(torch.equal(weights[k], final[k].bfloat16()) for k in final)
    assert read_checkpoint_metadata(dest / "model.safetensors") == metadata
    assert card["weights_dtype"] == "bfloat16" and card["stages"] == before["stages"]
    assert card["weights_sha256"] == hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest()
    assert len(list((dest / "logs").iterdir())) == 4  # the logs stay
    assert ICFormerModel.from_pretrained(dest).trained is True
    with pytest.raises(ValueError, match=r"no published checkpoint with a card.json for \['icae'\]"):
        republish(assets, train_data, ["icae"])


def test_the_app_shows_a_published_checkpoints_card(tmp_path, train_data, tiny_target, tiny_llm_dir):
    from app.service import describe
    from icformer import ContextCompressor

    runs = _chain(tmp_path, train_data, tiny_target, tiny_llm_dir)
    card = publish(runs, tmp_path / "assets", train_data, ["icformer"], samples=1, length=8)["icformer"]
    model = ICFormerModel.from_pretrained(tmp_path / "assets" / "checkpoints" / "icformer")
    assert read_card(model.source_dir) == json.loads(json.dumps(card))
    shown = describe(ContextCompressor(tiny_target, model)).compressors["icformer"]
    summary = card_summary(card)
    assert shown["training"] == summary and shown["card_path"].endswith("checkpoints/icformer/README.md")
    samples = [s["samples_seen"] for s in card["stages"]]
    assert summary.startswith(f"{samples[0]:,} pretrain + {samples[1]:,} finetune samples")
    assert f"BLEU {card['heldout_reconstruction']['bleu']:.3f}" in summary
    assert read_card(None) is None and read_card(tmp_path) is None


def test_publish_refuses_an_unfinished_run_and_leaves_assets_alone(tmp_path, train_data, tiny_target, tiny_llm_dir):
    runs = _chain(tmp_path, train_data, tiny_target, tiny_llm_dir, finish=False)
    with pytest.raises(ValueError, match=r"icformer-finetune is unfinished \(step 1 of 2\)"):
        publish(runs, tmp_path / "assets", train_data, ["icformer"], samples=1, length=8)
    assert not (tmp_path / "assets").exists()
    with pytest.raises(ValueError, match="unknown checkpoint names"):
        publish(runs, tmp_path / "assets", train_data, ["icformer-xl"])


def test_a_chain_that_goes_on_from_a_published_checkpoint_keeps_its_stages_and_logs(tmp_path, train_data, tiny_target,
                                                                                      tiny_llm_dir):
    runs = _chain(tmp_path, train_data, tiny_target, tiny_llm_dir)
    (runs / "NOTE.md").write_text("The first chain.\n")
    assets = tmp_path / "assets"
    first = publish(runs, assets, train_data, ["icformer"], samples=1, length=8)["icformer"]
    dest = assets / "checkpoints" / "icformer"
    more = tmp_path / "more"  # the first runs may be gone by now: only the published checkpoint is read
    common = dict(llm=str(tiny_llm_dir), max_steps=3, save_every=1, eval_every=1)
    train(tiny_train_config(tmp_path, train_data, out_dir=str(more / "icformer-pretrain"), init_from=str(dest),
                            **common), target=tiny_target)
    train(tiny_train_config(tmp_path, train_data, out_dir=str(more / "icformer-finetune"), stage="finetune",
                            init_from=str(more / "icformer-pretrain" / "checkpoint-3" / "model"), **common),
          target=tiny_target)
    card = publish(more, assets, train_data, ["icformer"], samples=1, length=8)["icformer"]
    assert [(s["run"], s["steps"]) for s in card["stages"]] == [
        ("earlier/icformer-pretrain", 2), ("earlier/icformer-finetune", 2), ("icformer-pretrain", 3),
        ("icformer-finetune", 3)]
    assert card["stages"][:2] == [{**s, "run": f"earlier/{s['run']}"} for s in first["stages"]]
    logs = dest / "logs"
    assert (logs / "icformer-pretrain.yaml").is_file() and (logs / "earlier" / "icformer-pretrain.metrics.jsonl").is_file()
    assert (logs / "earlier" / "NOTE.md").read_text() == "The first chain.\n"
    assert "| pretrain | earlier/icformer-pretrain | 2 |" in (dest / "README.md").read_text()
    assert card_summary(card).startswith("8 pretrain + 8 finetune + 12 pretrain + 12 finetune samples")
    assert "going on\nfrom an earlier published checkpoint" in (dest / "README.md").read_text()
    with pytest.raises(ValueError, match="already holds the runs"):  # publishing the same runs again would count them twice
        publish(more, assets, train_data, ["icformer"], samples=1, length=8)
    again = tmp_path / "again"  # a third chain: the second's stages, earlier ones included, nest once more
    train(tiny_train_config(tmp_path, train_data, out_dir=str(again / "icformer-pretrain"), init_from=str(dest),
                            **common), target=tiny_target)
    train(tiny_train_config(tmp_path, train_data, out_dir=str(again / "icformer-finetune"), stage="finetune",
                            init_from=str(again / "icformer-pretrain" / "checkpoint-3" / "model"), **common),
          target=tiny_target)
    third = publish(again, assets, train_data, ["icformer"], samples=1, length=8)["icformer"]
    assert [s["run"] for s in third["stages"][:4]] == [
        "earlier/earlier/icformer-pretrain", "earlier/earlier/icformer-finetune", "earlier/icformer-pretrain",
        "earlier/icformer-finetune"]
    assert (logs / "earlier" / "earlier" / "NOTE.md").read_text() == "The first chain.\n"


def test_a_chain_is_the_runs_its_final_run_started_from(tmp_path, train_data, tiny_target, tiny_llm_dir):
    runs = _chain(tmp_path, train_data, tiny_target, tiny_llm_dir)
    common = dict(llm=str(tiny_llm_dir), max_steps=2, save_every=1, eval_every=1)
    train(tiny_train_config(tmp_path, train_data, out_dir=str(runs / "icformer-lengths"), context_tokens=32,
                            short_window_ratio=0.5, init_from=str(runs / "icformer-pretrain" / "checkpoint-2" / "model"),
                            **common), target=tiny_target)
    config = runs / "icformer-finetune" / "config.yaml"  # as if trained elsewhere: linked by the run's name
    config.write_text(config.read_text().replace(str(runs / "icformer-pretrain"), "/elsewhere/icformer-lengths"))
    card = publish(runs, tmp_path / "assets", train_data, ["icformer"], samples=1, length=8)["icformer"]
    assert [s["run"] for s in card["stages"]] == ["icformer-pretrain", "icformer-lengths", "icformer-finetune"]
    assert card["stages"][1]["config"]["short_window_ratio"] == 0.5
    for run, source in [("a", "b/checkpoint-1/model"), ("b", "a/checkpoint-1/model")]:
        (tmp_path / "loop" / run).mkdir(parents=True)
        (tmp_path / "loop" / run / "config.yaml").write_text(f"init_from: {source}\n")
    with pytest.raises(ValueError, match="in a loop"):
        chain_runs(tmp_path / "loop", "a")
