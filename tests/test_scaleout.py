"""Scale-out: the accelerate configs in configs/accelerate/ and gradient checkpointing.

The configs are checked with accelerate's own machinery: its config classes (unknown keys
fail), its launch parser (every backend key must be a real launch option), its launch
environment builders, and the FSDP / DeepSpeed plugins that read that environment. DDP and
FSDP also run for real: `accelerate launch` with ddp.yaml / fsdp.yaml on two CPU processes
(gloo). DeepSpeed itself is not installed here; nothing below needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from icformer.objectives import CompressionObjective, autoencoding_example
from icformer.train import STATE_NAME, TrainConfig, checkpoint_llm, configure_deepspeed, restore_trainer_state, train

from .conftest import make_tiny_icformer

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "accelerate"
EXPECTED = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero2": "DEEPSPEED"}
TRAIN_ARGS = ["-m", "icformer", "train", "--preset", "paper-pretrain", "--grad-accum", "4", "--gradient-checkpointing"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_args(name: str, *extra: str) -> argparse.Namespace:
    """What `accelerate launch --config_file <name>.yaml ... -m icformer train ...` resolves to."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = ["--config_file", str(CONFIGS / f"{name}.yaml"), "--main_process_port", str(_free_port()), *extra]
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv + TRAIN_ARGS))
    if args.use_deepspeed:  # as accelerate's launch_command does before building the DeepSpeed env
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return args


def _launch_env(args: argparse.Namespace) -> dict[str, str]:
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    if args.use_deepspeed:
        cmd, env = prepare_deepspeed_cmd_env(args)
        assert cmd is None  # one machine: accelerate runs torchrun, not the `deepspeed` launcher
        return env
    return prepare_multi_gpu_env(args)


def test_every_backend_has_a_config():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerates_own_schema(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))  # unknown top-level keys raise
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == EXPECTED[name]
    assert config.mixed_precision == "bf16" and config.num_machines == 1 and not config.use_cpu
    # Backend keys are copied onto launch options by name; accelerate ignores misspelt ones
    # silently, so every key must be a real option of `accelerate launch`.
    options = {action.dest for action in launch_command_parser()._actions}
    for key in config.fsdp_config:
        assert (key if key.startswith("fsdp") else "fsdp_" + key) in options, key
    for key in config.deepspeed_config:
        assert key in options, key
    assert bool(config.fsdp_config) == (name == "fsdp")
    assert bool(config.deepspeed_config) == (name == "deepspeed-zero2")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_command_line_builds(name, monkeypatch):
    """Resolve the launch as `accelerate launch` would, then let the backend plugin read it."""
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    args = _launch_args(name)
    assert (args.module, args.training_script) == (True, "icformer")
    assert args.training_script_args[:3] == ["train", "--preset", "paper-pretrain"]
    assert args.num_processes == 4 and args.mixed_precision == "bf16"
    env = _launch_env(args)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and args.nproc_per_node == "4"
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    if name == "ddp":
        assert args.multi_gpu and "ACCELERATE_USE_FSDP" not in env and "ACCELERATE_USE_DEEPSPEED" not in env
    elif name == "fsdp":
        plugin = FullyShardedDataParallelPlugin()  # validates version, policy, state-dict type
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer", "ICFormerBlock"]
        assert plugin.state_dict_type.name == "FULL_STATE_DICT"
        # the classes named for wrapping exist under those names
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        from icformer.compressors.modeling_icformer import ICFormerBlock

        assert (LlamaDecoderLayer.__name__, ICFormerBlock.__name__) == ("LlamaDecoderLayer", "ICFormerBlock")
    else:
        plugin = DeepSpeedPlugin()  # builds the DeepSpeed config dict; deepspeed itself is not needed
        ds = plugin.deepspeed_config
        assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 2.0
        assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    # the training command the launcher runs parses with our CLI and the paper preset
    from icformer.cli import VERBS

    assert "train" in VERBS
    config = TrainConfig.from_sources("paper-pretrain", None, grad_accum=4, gradient_checkpointing=True)
    assert (config.num_digest_tokens, config.chunk_size, config.grad_accum) == (128, 512, 4)
    assert config.gradient_checkpointing is True


def test_deepspeed_gets_batch_accumulation_and_clipping_before_prepare(monkeypatch):
    """Without a DataLoader, accelerate's DeepSpeed prepare needs the micro-batch size set;
    --grad-accum and --clip must reach DeepSpeed, which accumulates and clips by itself."""
    from accelerate.utils import DeepSpeedPlugin

    for key, value in _launch_env(_launch_args("deepspeed-zero2")).items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.is_auto("train_micro_batch_size_per_gpu")  # what prepare() would refuse
    configure_deepspeed(plugin, TrainConfig(batch_size=2, grad_accum=8, clip=1.5))
    assert not plugin.is_auto("train_micro_batch_size_per_gpu")
    assert plugin.get_value("train_micro_batch_size_per_gpu") == 2
    assert plugin.get_value("gradient_accumulation_steps") == 8 and plugin.get_value("gradient_clipping") == 1.5
    assert plugin.get_value("zero_optimization.stage") == 2


def test_resume_is_refused_where_deepspeed_left_no_optimizer_state(tmp_path):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    torch.save({"step": 3, "optimizer": None}, tmp_path / STATE_NAME)
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(NotImplementedError, match="--init-from"):
        restore_trainer_state(tmp_path, accelerator, None, None, None)


def test_train_cli_has_a_boolean_gradient_checkpointing_flag():
    from icformer.cli.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, "train")
    assert parser.parse_args([]).gradient_checkpointing is None  # preset / YAML decides
    assert parser.parse_args(["--gradient-checkpointing"]).gradient_checkpointing is True
    assert parser.parse_args(["--no-gradient-checkpointing"]).gradient_checkpointing is False


def _checkpointing(model) -> bool:
    flag = getattr(type(model), "is_activation_checkpointing", None)  # is_gradient_checkpointing, renamed
    return model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing


def _compressor_grads(objective, compressor, examples):
    compressor.zero_grad(set_to_none=True)
    loss, _ = objective(examples)
    loss.backward()
    return {name: p.grad.clone() for name, p in compressor.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_recomputes_the_llm_and_gradients_still_reach_the_compressor(tiny_target):
    compressor = make_tiny_icformer(tiny_target).train()
    objective = CompressionObjective(compressor, tiny_target)
    ids = tiny_target.tokenizer("The fox waited at the edge of the field.", add_special_tokens=False)["input_ids"]
    examples = [autoencoding_example(tiny_target.tokenizer, ids)]
    mlp = tiny_target.model.model.layers[0].mlp
    calls = []
    original = mlp.forward
    mlp.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        plain = _compressor_grads(objective, compressor, examples)
        assert len(calls) == 1  # one forward, activations kept
        undo = checkpoint_llm(tiny_target.model)
        try:
            calls.clear()
            checkpointed = _compressor_grads(objective, compressor, examples)
            assert len(calls) == 2  # forward, then recomputed in backward
            assert _checkpointing(tiny_target.model) and tiny_target.model.training
        finally:
            undo()
    finally:
        del mlp.forward
    assert not _checkpointing(tiny_target.model) and not tiny_target.model.training  # left as found
    assert all(not p.requires_grad for p in tiny_target.model.parameters())  # the LLM stays frozen
    trainable = {n for n, p in compressor.named_parameters() if p.requires_grad}
    assert set(checkpointed) == set(plain)
    assert {n for n in trainable if n != "task_embeddings.FT"} <= set(plain)  # FT is unused by autoencoding
    for name in plain:
        assert checkpointed[name].abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def _data(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": "The river ran slowly past the mill, carrying leaves toward the sea."},
            {"text": "A lamp burned in the window of the inn, and travellers warmed their hands."}]
    for name in ("pretrain_train.jsonl", "pretrain_valid.jsonl"):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def test_training_with_gradient_checkpointing_runs_and_restores_the_llm(tmp_path, tiny_target):
    config = TrainConfig(data_dir=str(_data(tmp_path)), out_dir=str(tmp_path / "run"), num_digest_tokens=4,
                         chunk_size=16, batch_size=1, grad_accum=1, max_steps=2, eval_every=2, eval_samples=2,
                         save_every=2, digest_init_std=0.02, gradient_checkpointing=True)
    row = train(config, target=tiny_target)
    assert row["step"] == 2 and row["grad_norm"] > 0 and "valid_loss" in row
    assert not _checkpointing(tiny_target.model) and not tiny_target.model.training


def test_gradient_checkpointing_is_refused_for_icae(tmp_path, tiny_target):
    """ICAE switches its LoRA adapter off after encoding; a backward recompute would run without it."""
    config = TrainConfig(method="icae", data_dir=str(tmp_path), out_dir=str(tmp_path / "run"),
                         gradient_checkpointing=True)
    with pytest.raises(ValueError, match="gradient_checkpointing is for IC-Former"):
        train(config, target=tiny_target)


@pytest.mark.slow
def test_ddp_config_runs_one_step_on_two_cpu_processes(tmp_path, tiny_llm_dir):
    """`accelerate launch --config_file configs/accelerate/ddp.yaml` for real: the MULTI_GPU
    launcher is torchrun underneath, and accelerate falls back to gloo on CPU."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml"),
           "--num_processes", "2", "--main_process_port", str(_free_port()),
           "-m", "icformer", "train", "--llm", str(tiny_llm_dir), "--data-dir", str(_data(tmp_path)),
           "--out", str(out), "--num-digest-tokens", "4", "--chunk-size", "16", "--batch-size", "1",
           "--grad-accum", "1", "--max-steps", "1", "--eval-every", "100", "--save-every", "100",
           "--eval-samples", "2", "--digest-init-std", "0.02", "--gradient-checkpointing"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1] and log[1]["samples_seen"] == 2  # step 0's scores; two ranks, one sample each
    assert (out / "checkpoint-1" / "model" / "model.safetensors").is_file()


# accelerate turns FSDP on only for accelerator devices (CUDA, XPU, ...): on CPU it silently
# runs multi-CPU DDP instead. This entry point has it take the CPU for such a device (a gloo
# process group, tensors on "cpu"), runs `python -m icformer` unchanged, and reports the backend.
CPU_FSDP_ENTRY = """
import os, runpy, sys
import torch.distributed as dist
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
PartialState._prepare_backend = lambda self, *args, **kwargs: ("gloo", DistributedType.MULTI_GPU)
dist.init_process_group("gloo")
sys.argv[0] = "icformer"
try:
    runpy.run_module("icformer", run_name="__main__", alter_sys=True)
finally:
    state = AcceleratorState()  # one write() per rank: two ranks share the pipe, print() pieces interleave
    os.write(1, f"rank {state.process_index} backend: {state.distributed_type.value} fsdp2: {state.is_fsdp2}\\n".encode())
"""


@pytest.mark.slow
def test_fsdp_config_trains_on_two_cpu_processes_resumes_exactly_and_matches_one_process(tmp_path, tiny_llm_dir):
    """configs/accelerate/fsdp.yaml (FSDP2) for real, fp32 on CPU: 2 ranks x batch 1 trains
    what 1 rank x batch 2 trains, the saved weights are whole, and a resume from step 1
    ends bit-exact with the run that went straight through."""
    from safetensors.torch import load_file

    from icformer import ICFormerModel
    from icformer.llm import load_llm
    from icformer.train import build_model

    config = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    config.update(mixed_precision="no", num_processes=2)  # bf16 is for the GPUs
    (tmp_path / "fsdp-cpu.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "cpu_fsdp.py").write_text(CPU_FSDP_ENTRY)
    data = _data(tmp_path)
    common = ["train", "--llm", str(tiny_llm_dir), "--data-dir", str(data), "--num-digest-tokens", "4",
              "--chunk-size", "16", "--grad-accum", "2", "--max-steps", "2", "--eval-every", "100",
              "--save-every", "1", "--eval-samples", "2", "--digest-init-std", "0.02",
              "--mixed-precision", "no"]  # the single-process reference too: "auto" is bf16 on an AMX CPU
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def fsdp(out: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp-cpu.yaml"),
               "--main_process_port", str(_free_port()), str(tmp_path / "cpu_fsdp.py"), *common,
               "--out", str(out), "--batch-size", "1", "--gradient-checkpointing", *extra]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        reports = sorted(re.findall(r"rank (\d) backend: FSDP fsdp2: True", done.stdout))
        assert reports == ["0", "1"], done.stdout[-2000:]

    fsdp(tmp_path / "fsdp")
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "fsdp" / "checkpoint-1", tmp_path / "resumed" / "checkpoint-1")
    fsdp(tmp_path / "resumed", "--resume")
    one = subprocess.run([sys.executable, "-m", "icformer", *common, "--out", str(tmp_path / "one"),
                          "--batch-size", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    weights = {run: load_file(str(tmp_path / run / "checkpoint-2" / "model" / "model.safetensors"))
               for run in ("fsdp", "resumed", "one")}
    init = build_model(TrainConfig(num_digest_tokens=4, chunk_size=16, digest_init_std=0.02),
                            load_llm(str(tiny_llm_dir))).state_dict()
    assert weights["fsdp"].keys() == weights["one"].keys() == init.keys()
    assert all(weights["fsdp"][k].shape == init[k].shape for k in init)  # gathered, not one shard
    for name in init:
        assert torch.equal(weights["fsdp"][name], weights["resumed"][name]), name
    moved = max((weights["one"][k] - init[k]).abs().max().item() for k in init)
    apart = max((weights["one"][k] - weights["fsdp"][k]).abs().max().item() for k in init)
    assert moved > 0 and apart < 1e-3 * moved
    loaded = ICFormerModel.from_pretrained(tmp_path / "fsdp" / "checkpoint-2" / "model")
    assert loaded.trained is True and loaded.config.num_digest_tokens == 4
