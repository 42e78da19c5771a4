"""scripts/gpu_train.sh and what it stands on: shipments through a lease's size limits, wall-clock
budgets, the export of runs that comes back, and the CPU rehearsal of the whole lease."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from icformer import lease
from icformer.compressors.checkpoint import read_checkpoint_metadata
from icformer.publish import export_runs, publish
from icformer.train import latest_checkpoint, train

from .conftest import tiny_train_config

ROOT = Path(__file__).resolve().parent.parent


def _files(tmp_path, sizes):
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / "in" / f"file{i}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def test_pack_spreads_files_over_shipments_of_the_room_and_unpack_rebuilds_them(tmp_path):
    files = _files(tmp_path, [3 << 20, 0, (5 << 20) + 7])
    manifest = lease.pack(files, tmp_path / "lease", room=2 << 20)
    assert manifest["shipments"] == 5  # 8 MiB + 7 bytes in shipments of 2 MiB
    for ship in (tmp_path / "lease").glob("ship-*"):
        assert sum(p.stat().st_size for p in ship.iterdir()) <= 2 << 20
    built = lease.unpack(tmp_path / "lease", tmp_path / "out")
    assert [p.read_bytes() for p in built] == [p.read_bytes() for p in files]


def test_unpack_names_the_shipments_to_carry_again(tmp_path):
    lease.pack(_files(tmp_path, [5 << 20]), tmp_path / "lease", room=2 << 20)
    (tmp_path / "lease" / "ship-2" / "file0.bin.part1").unlink()
    part = tmp_path / "lease" / "ship-3" / "file0.bin.part2"
    data = part.read_bytes()
    part.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # always differs (random data may start with any byte)
    assert lease.missing_parts(tmp_path / "lease") == {2: ["ship-2/file0.bin.part1"], 3: ["ship-3/file0.bin.part2"]}
    with pytest.raises(FileNotFoundError, match="shipment 2 .*carry ship-2 again.*shipment 3"):
        lease.unpack(tmp_path / "lease", tmp_path / "out")
    with pytest.raises(ValueError, match="too little to ship"):
        lease.pack(_files(tmp_path, [10]), tmp_path / "lease2", room=1000)


def test_bundle_comes_back_in_parts_within_the_return_limits_and_is_checked(tmp_path):
    source = tmp_path / "runs"
    (source / "a").mkdir(parents=True)
    (source / "a" / "w.bin").write_bytes(os.urandom(5 << 20))
    (source / "log.jsonl").write_text("{}\n")
    record = lease.bundle(source, tmp_path / "out", part_bytes=2 << 20)
    assert len(record["parts"]) == 3 and all(p["bytes"] <= 2 << 20 for p in record["parts"])
    dest = lease.unbundle(tmp_path / "out", tmp_path / "back")
    assert (dest / "a" / "w.bin").read_bytes() == (source / "a" / "w.bin").read_bytes()
    with pytest.raises(FileExistsError):
        lease.unbundle(tmp_path / "out", tmp_path / "back")
    (tmp_path / "out" / "bundle.tar.part01").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="part01 is missing or differs"):
        lease.unbundle(tmp_path / "out", tmp_path / "again")


def test_tree_bytes_counts_what_a_call_sends(tmp_path):
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / ".gitignore").write_text("/ignored/\n")
    (tmp_path / "tracked.bin").write_bytes(b"t" * 1000)
    git("add", ".gitignore", "tracked.bin")
    (tmp_path / "untracked.txt").write_bytes(b"u" * 100)
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big.bin").write_bytes(b"i" * 5000)
    assert lease.tree_bytes(tmp_path) == 1000 + 100 + len("/ignored/\n")


def test_a_time_budget_ends_the_run_as_finished_and_export_keeps_what_publish_needs(tmp_path, train_data,
                                                                                   tiny_target, tiny_llm_dir):
    runs = tmp_path / "runs"
    common = dict(llm=str(tiny_llm_dir), save_every=1000, eval_every=1000)
    pretrain = tiny_train_config(tmp_path, train_data, out_dir=str(runs / "icformer-pretrain"), max_steps=1000,
                                 time_budget_s=0.0, **common)
    row = train(pretrain, target=tiny_target)
    assert row["step"] == 1  # the deadline passed during the first step, which was saved
    assert "valid_loss" in row and "valid_swap_gap" in row  # and scored, although eval_every is 1000
    checkpoint = latest_checkpoint(runs / "icformer-pretrain")
    assert checkpoint.name == "checkpoint-1"
    assert read_checkpoint_metadata(checkpoint / "model" / "model.safetensors")["trained"] == "true"
    finetune = tiny_train_config(tmp_path, train_data, out_dir=str(runs / "icformer-finetune"), stage="finetune",
                                 max_steps=2, init_from=str(checkpoint / "model"), **common)
    train(finetune, target=tiny_target)

    exported = tmp_path / "export"
    assert export_runs(runs, exported) == ["icformer-finetune", "icformer-pretrain"]
    assert not list(exported.rglob("trainer_state.pt"))  # optimizer state stays behind
    assert not (exported / "icformer-pretrain" / "checkpoint-1" / "model" / "model.safetensors").exists()
    weights = load_file(str(exported / "icformer-finetune" / "checkpoint-2" / "model" / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    card = publish(exported, tmp_path / "assets", train_data, ["icformer"], samples=1, length=8)["icformer"]
    assert [s["steps"] for s in card["stages"]] == [1, 2]


@pytest.mark.slow
def test_stash_takes_the_committed_weights_logs_and_results_out_of_what_a_call_sends_and_unstash_puts_them_back(
        tmp_path):
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "gpu_train.sh").write_text((ROOT / "scripts" / "gpu_train.sh").read_text())
    (tmp_path / ".gitignore").write_text("/.gpu/\n")
    stashed = {}
    for name in ("icformer", "icae"):
        folder = tmp_path / "assets" / "checkpoints" / name
        (folder / "logs").mkdir(parents=True)
        stashed[folder / "model.safetensors"] = name.encode() * 1000
        stashed[folder / "logs" / "pretrain.metrics.jsonl"] = b"{}\n" * 100
        (folder / "card.json").write_text("{}")  # stays: prepare checks the shipped weights against it
    stashed[tmp_path / "assets" / "results" / "summary.json"] = b"[]" * 50
    for path, data in stashed.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    git("add", ".")
    before = lease.tree_bytes(tmp_path)
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    script = lambda verb: subprocess.run(["bash", "scripts/gpu_train.sh", verb], cwd=tmp_path, env=env,  # noqa: E731
                                         capture_output=True, text=True, check=True).stdout
    assert "stashed 5 files (weights, logs, results)" in script("stash")
    assert lease.tree_bytes(tmp_path) == before - sum(map(len, stashed.values()))
    assert not any(path.exists() for path in stashed) and (tmp_path / "assets/checkpoints/icae/card.json").is_file()
    published = tmp_path / "assets" / "checkpoints" / "icformer" / "model.safetensors"
    published.write_bytes(b"new")  # published while they were stashed
    assert "put back 4 files; 1 were replaced by newly published ones" in script("unstash")
    assert published.read_bytes() == b"new"
    assert all(path.read_bytes() == data for path, data in stashed.items() if path != published)
    assert not (tmp_path / ".gpu" / "stash").exists()
    assert "nothing stashed" in script("unstash")


@pytest.mark.parametrize("mode, what, calls", [("published", "GGUF, data, wheel and 2 published weight files", 5),
                                               ("scratch", "GGUF, data and wheel", 4)])
def test_prepare_refuses_a_lease_that_needs_too_many_calls(tmp_path, mode, what, calls):
    env = dict(os.environ, PYTHON=sys.executable, LEASE_DIR=str(tmp_path / "lease"), DATA_ROWS="4", MAX_CALLS="1",
               ROOM_MIB="30", FROM=mode)
    done = subprocess.run(["bash", "scripts/gpu_train.sh", "prepare"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert f"room per call: 30.0 MiB; {what} in {calls} shipments" in done.stdout
    assert f"{calls} calls (more than MAX_CALLS=1) would not fit one lease" in done.stderr
    assert not (tmp_path / "lease").exists()


# A Python that fails IC-Former's pre-training once before its first step, as a start out of GPU memory would.
FAILING_START = """#!/usr/bin/env bash
if [[ " $* " == *" -m icformer train "* && " $* " == *"/runs/icformer-pretrain "* && " $* " != *" --grad-accum 2 "* ]]
then echo "simulated: CUDA out of memory" >&2; exit 1; fi
exec {python} "$@"
"""


@pytest.mark.slow
def test_the_cpu_rehearsal_runs_the_lease_end_to_end(tmp_path):
    """`scripts/gpu_train.sh rehearse`: prepare in several shipments (the published weights among them), run the
    four stages of the embedded model on from the published checkpoints under budgets, bring the bundle back
    within the return limits and publish it with the earlier stages first. IC-Former's pre-training fails to
    start once, so the rehearsal also takes the lease's retry: the same samples per step in halves."""
    python = tmp_path / "python"
    python.write_text(FAILING_START.format(python=sys.executable))
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", "scripts/gpu_train.sh", "rehearse", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "GGUF, data, wheel and 2 published weight files in" in done.stdout
    assert "== icformer-pretrain: again with --batch-size 1 --grad-accum 2" in done.stdout
    assert "simulated: CUDA out of memory" in done.stdout + done.stderr
    out = tmp_path / "out"
    returned = [p for p in out.iterdir()]
    assert len(returned) <= lease.RETURN_FILES and all(p.stat().st_size <= lease.RETURN_FILE_LIMIT for p in returned)
    record = json.loads((tmp_path / "runs" / "training_run.json").read_text())
    stages = record["stages"]
    assert list(stages) == ["icformer-pretrain", "icformer-finetune", "icae-pretrain", "icae-finetune"]
    config = lambda run: yaml.safe_load((tmp_path / "runs" / run / "config.yaml").read_text())  # noqa: E731
    pretrain = config("icformer-pretrain")
    assert pretrain["init_from"] == "assets/checkpoints/icformer" and config("icae-pretrain")["init_from"] == \
        "assets/checkpoints/icae"
    assert (pretrain["context_tokens"], pretrain["short_window_ratio"], pretrain["readout_weight"]) == (512, 0.5, 0)
    assert (pretrain["batch_size"], pretrain["grad_accum"]) == (1, 2)  # the retry's halves
    assert (config("icae-pretrain")["batch_size"], config("icae-pretrain")["grad_accum"]) == (2, 1)
    assert stages["icformer-pretrain"]["ended"] == "time budget"  # max_steps 1000 is out of reach
    assert pretrain["decay_s"] == round(0.5 * record["budgets_s"]["icformer-pretrain"])  # its last half decays
    assert stages["icae-pretrain"]["steps"] == stages["icformer-pretrain"]["steps"]  # the same samples
    assert stages["icae-pretrain"]["samples_seen"] == stages["icformer-pretrain"]["samples_seen"]
    assert all(config(f"{m}-finetune")["ae_ratio"] == 0.25 for m in ("icformer", "icae"))
    assert all(s["tokens_per_s"] > 0 and s["samples_seen"] > 0 for s in stages.values())
    for name in ("icformer", "icae"):
        published = json.loads((ROOT / "assets" / "checkpoints" / name / "card.json").read_text())
        card = json.loads((tmp_path / "assets" / "checkpoints" / name / "card.json").read_text())
        assert card["training_run"] == record and card["weights_dtype"] == "bfloat16"
        earlier = [s["run"] for s in card["stages"][:len(published["stages"])]]
        assert earlier == [f"earlier/{s['run']}" for s in published["stages"]]
        assert [s["run"] for s in card["stages"][len(published["stages"]):]] == [f"{name}-pretrain", f"{name}-finetune"]
        readme = (tmp_path / "assets" / "checkpoints" / name / "README.md").read_text()
        assert "Trained with `scripts/gpu_train.sh run`" in readme
        assert "going on\nfrom an earlier published checkpoint" in readme


def test_stage_flags_go_on_from_the_published_checkpoints_or_start_from_scratch():
    def flags(mode):
        env = dict(os.environ, PYTHON=sys.executable, FROM=mode)
        done = subprocess.run(["bash", "scripts/gpu_train.sh", "stage-flags"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60, check=True)
        return dict(line.split(": ", 1) for line in done.stdout.splitlines())

    published = flags("published")
    assert list(published) == ["icformer-pretrain", "icformer-finetune", "icae-pretrain", "icae-finetune"]
    assert "--init-from assets/checkpoints/icformer" in published["icformer-pretrain"]
    assert "--short-window-ratio 0.5" in published["icae-pretrain"] and "--readout-weight 0" in published[
        "icformer-pretrain"]
    assert all("--seed 3" in f and "--ae-ratio 0.25" in f for s, f in published.items() if s.endswith("finetune"))
    scratch = flags("scratch")
    assert list(scratch)[0] == "icformer-warmup" and "--init-from" not in " ".join(scratch.values())
    assert "--local-window-layers 3 --readout-weight 1.0 --lr 1e-3" in scratch["icformer-pretrain"]
    assert all(f.startswith(f"--method {s.split('-')[0]} ") for s, f in {**published, **scratch}.items())
    bad = subprocess.run(["bash", "scripts/gpu_train.sh", "stage-flags"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, FROM="elsewhere"))
    assert bad.returncode != 0 and "FROM is published or scratch, not elsewhere" in bad.stderr


def test_each_pre_training_decays_over_its_last_share():
    def flags(*args, share="0.2"):
        env = dict(os.environ, PYTHON=sys.executable, DECAY_SHARE=share)
        done = subprocess.run(["bash", "scripts/gpu_train.sh", "decay-flags", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=True)
        return done.stdout.strip()

    assert flags("icformer-pretrain", "100", "0") == "--decay-s 20"  # seconds: its step count is not known ahead
    assert flags("icae-pretrain", "300", "500") == "--decay-steps 100"  # ICAE is given IC-Former's steps
    assert flags("icae-pretrain", "300", "60") == "--decay-steps 10"  # never into the preset's 50 warm-up steps
    assert flags("icae-pretrain", "300", "40") == "" and flags("icformer-pretrain", "100", "0", share="0") == ""
    # the warm-up the stage's own arguments resolve to: 30 steps, not the preset's 50
    assert flags("icae-pretrain", "300", "60", "--preset", "cpu-pretrain", "--warmup-steps", "30") == "--decay-steps 12"
    assert flags("icae-pretrain", "300", "40", "--preset", "cpu-pretrain", "--warmup-steps", "30") == "--decay-steps 8"


def test_a_stage_that_fails_before_its_first_step_is_retried_with_the_same_samples_per_step():
    def halved(*args):
        done = subprocess.run(["bash", "scripts/gpu_train.sh", "halved", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=True, env=dict(os.environ, PYTHON=sys.executable))
        return done.stdout.strip()

    assert halved("--preset", "cpu-pretrain", "--batch-size", "64") == "--batch-size 32 --grad-accum 2"
    assert halved("--preset", "cpu-finetune", "--batch-size", "6", "--grad-accum", "3") == "--batch-size 3 --grad-accum 6"
    assert halved("--preset", "cpu-pretrain", "--batch-size", "3") == ""  # 1 x 2 would change the samples per step
