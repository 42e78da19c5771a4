"""Publishing: finished runs become assets/checkpoints/<name>/ with a card computed from their logs."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from icformer import ICFormerModel
from icformer.publish import card_summary, publish, read_card
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
    assert published.keys() == expected.keys() and all(torch.equal(published[k], expected[k]) for k in expected)
    assert ICFormerModel.from_pretrained(dest).trained is True
    assert sorted(p.name for p in (dest / "logs").iterdir()) == [
        "icformer-finetune.metrics.jsonl", "icformer-finetune.yaml", "icformer-pretrain.metrics.jsonl",
        "icformer-pretrain.yaml"]

    card = json.loads((dest / "card.json").read_text())
    assert card["weights_sha256"] == hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest()
    assert card == json.loads(json.dumps(cards["icformer"]))
    log = [json.loads(x) for x in (runs / "icformer-finetune" / "metrics.jsonl").read_text().splitlines()]
    stage = card["stages"][1]
    assert (stage["stage"], stage["steps"], stage["samples_seen"]) == ("finetune", 2, log[-1]["samples_seen"])
    assert stage["train_seconds"] == pytest.approx(sum(r["step_s"] for r in log))
    assert stage["machine"] and "CPU cores" in stage["machine"]
    rec = card["heldout_reconstruction"]
    assert rec["samples"] == 2 and 0.0 <= rec["bleu"] <= 1.0 and rec["ce"] > 0
    readme = (dest / "README.md").read_text()
    assert f"| finetune | icformer-finetune | 2 | {log[-1]['samples_seen']} |" in readme
    assert f"BLEU {rec['bleu']:.4f}" in readme


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
