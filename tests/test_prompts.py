"""Prompt styles: each renders its source's exact token layout on the tiny tokenizer, a converted
release records its style, and everything that prompts the LLM (answer, reconstruct, training
examples, the compressor's own input) follows the style of the checkpoint it uses."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from icformer import ContextCompressor, ICFormerModel, UntrainedWarning
from icformer import compressor as compressor_module
from icformer.convert import convert_icae, convert_icformer
from icformer.evaluate import Method
from icformer.compressors.icae import ICAEConfig, ICAEModel
from icformer.llm import load_llm
from icformer.objectives import autoencoding_example, question_example
from icformer.prompts import (
    PROMPT_STYLES,
    Layout,
    assemble,
    context_prefix_ids,
    question_layout,
    reconstruction_layout,
)
from icformer.train import SampleStream

from .conftest import make_tiny_icformer, tiny_train_config
from .test_convert import icae_release, reference_config, reference_tensors, write_reference
from .tiny import make_tiny_tokenizer

TEXT = "The letter was written by Anna in the spring. She sent it to her brother in Lyon."
QUESTION = "Who wrote the letter?"


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- the layouts themselves


def test_default_style_is_the_chat_template_around_the_vectors_as_before(tok):
    bos = tok.bos_token_id
    assert reconstruction_layout(tok) == Layout([], "AE", [bos]) == reconstruction_layout(tok, "default")
    layout = question_layout(tok, QUESTION)
    assert layout == question_layout(tok, QUESTION, style="default")
    assert layout.prefix_ids == ids(tok, "<|im_start|>user\nResponse the Prompt based on the below text:\n\n")
    assert layout.task == "FT"
    assert layout.suffix_ids == ids(tok, f"\n\nPrompt: {QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert question_layout(tok, QUESTION, task=None).task is None  # the full context: no task vector
    plain = make_tiny_tokenizer()
    plain.chat_template = None  # a plain LM: <bos>, instruction, question, answer after a newline
    layout = question_layout(plain, QUESTION)
    assert layout.prefix_ids == [bos] + ids(tok, "Response the Prompt based on the below text:\n\n")
    assert layout.suffix_ids == ids(tok, f"\n\nPrompt: {QUESTION}\n")
    assert context_prefix_ids(tok) == []


def test_icformer_reference_style(tok):
    """wonderful9462/IC-Former modules.py: '<s>[INST] Response ...:\\n\\n' [digests][FT], then
    '\\n\\nPrompt: ' + question and '[/INST]' tokenised apart; pre-training reads [AE] then the text."""
    style = "icformer-reference"
    layout = question_layout(tok, QUESTION, style=style)
    assert layout.prefix_ids == [tok.bos_token_id] + ids(tok, "[INST] Response the Prompt based on the below text:\n\n")
    assert layout.task == "FT"
    assert layout.suffix_ids == ids(tok, f"\n\nPrompt: {QUESTION}") + ids(tok, "[/INST]")
    assert tok.decode(layout.prefix_ids) == "<s>[INST] Response the Prompt based on the below text:\n\n"
    assert tok.decode(layout.suffix_ids) == f"\n\nPrompt: {QUESTION}[/INST]"
    assert reconstruction_layout(tok, style) == Layout([], "AE", [])
    assert context_prefix_ids(tok, style) == []


def test_icae_v2_style(tok):
    """getao/icae code/icae_v2: <s> [INST] [slots][FT] question [/INST]; [slots][AE] <s> ...; the
    encoder reads <s> + context."""
    style = "icae-v2"
    layout = question_layout(tok, QUESTION, style=style)
    assert layout.prefix_ids == [tok.bos_token_id] + ids(tok, "[INST]")
    assert layout.task == "FT"
    assert layout.suffix_ids == ids(tok, QUESTION) + ids(tok, "[/INST]")
    assert tok.decode(layout.prefix_ids + layout.suffix_ids) == f"<s>[INST]{QUESTION}[/INST]"
    assert reconstruction_layout(tok, style) == Layout([], "AE", [tok.bos_token_id])
    assert context_prefix_ids(tok, style) == [tok.bos_token_id]


def test_an_unknown_style_is_refused_by_name(tok, tiny_target):
    with pytest.raises(ValueError, match="unknown prompt style 'chatml'"):
        question_layout(tok, QUESTION, style="chatml")
    with pytest.raises(ValueError, match="icae-v2"):
        reconstruction_layout(tok, "icae_v2")
    with pytest.raises(ValueError, match="unknown prompt style"):
        ContextCompressor(tiny_target, make_tiny_icformer(tiny_target, prompt_style="v3"))


# --------------------------------------------------------------------------- configs


def test_config_without_the_field_loads_as_default(tiny_target, tmp_path):
    make_tiny_icformer(tiny_target).save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert config.pop("prompt_style") == "default"
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))  # as written before the field existed
    assert ICFormerModel.from_pretrained(tmp_path / "old").config.prompt_style == "default"
    assert ICAEConfig.from_dict({"hidden_size": 32}).prompt_style == "default"
    styled = make_tiny_icformer(tiny_target, prompt_style="icae-v2")
    styled.save_pretrained(tmp_path / "new")
    assert ICFormerModel.from_pretrained(tmp_path / "new").config.prompt_style == "icae-v2"


# --------------------------------------------------------------------------- converted checkpoints in use


@pytest.fixture
def llm_inputs(monkeypatch):
    """Every inputs_embeds tensor ContextCompressor hands to generation, in call order."""
    seen = []
    generate = compressor_module.generate_from_embeds

    def spy(llm, tokenizer, inputs, *args):
        seen.append(inputs.detach().clone())
        return generate(llm, tokenizer, inputs, *args)

    monkeypatch.setattr(compressor_module, "generate_from_embeds", spy)
    return seen


def test_converted_reference_icformer_is_prompted_in_its_style(tmp_path, tiny_target, llm_inputs):
    weights, params = reference_tensors()
    source = write_reference(tmp_path / "ref", reference_config(), weights, params)
    out, _ = convert_icformer(source, tmp_path / "ours", chunk_size=16, dtype=torch.float32)
    assert json.loads((out / "config.json").read_text())["prompt_style"] == "icformer-reference"
    model = ICFormerModel.from_pretrained(out)
    cc = ContextCompressor(tiny_target, model)
    tok, embed = cc.tokenizer, tiny_target.embed
    z = cc.compress(TEXT)
    with torch.no_grad():  # the compressor reads the context alone, as in the reference's fine-tuning
        expected = model.compress([embed(torch.tensor(cc.tokenize(TEXT)))])[0]
    torch.testing.assert_close(z.vectors, expected)
    cc.answer(z, QUESTION, max_new_tokens=2)
    cc.reconstruct(z, max_new_tokens=2)
    ft, ae = model.task_embedding("FT"), model.task_embedding("AE")
    with torch.no_grad():
        question = assemble(embed, question_layout(tok, QUESTION, style="icformer-reference"), z.vectors, ft)
        reconstruction = assemble(embed, Layout([], "AE", []), z.vectors, ae)
    torch.testing.assert_close(llm_inputs[0], question)
    torch.testing.assert_close(llm_inputs[1], reconstruction)
    assert Method("ref", cc, "icformer").fingerprint().endswith("+icformer-reference")


def test_converted_icae_v2_reads_bos_first_and_is_prompted_in_its_style(tmp_path, tiny_llm_dir, llm_inputs):
    target = load_llm(str(tiny_llm_dir), device="cpu")  # a fresh LLM: the ICAE adapter goes into it
    save_file(icae_release(target), str(tmp_path / "release.safetensors"))
    out, _ = convert_icae(tmp_path / "release.safetensors", tmp_path / "ours", chunk_size=16)
    assert json.loads((out / "config.json").read_text())["prompt_style"] == "icae-v2"
    icae = ICAEModel.from_pretrained(out, target).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        cc = ContextCompressor(target, make_tiny_icformer(target), icae)
    tok, embed, bos = cc.tokenizer, target.embed, cc.tokenizer.bos_token_id
    z = cc.compress(TEXT, method="icae")
    context = cc.tokenize(TEXT)
    with torch.no_grad():
        expected = icae.compress([[bos] + context])[0]  # <s> context, split as ICAE v2 splits it
    torch.testing.assert_close(z.vectors, expected)
    assert z.num_tokens == len(context) and z.metadata["num_chunks"] == len(expected) // icae.config.k
    cc.answer(z, QUESTION, max_new_tokens=2)
    cc.reconstruct(z, max_new_tokens=2)
    cc.answer(TEXT, QUESTION, method="full", max_new_tokens=2)  # the full context: the chat template
    ft, ae = icae.task_embedding("FT"), icae.task_embedding("AE")
    with torch.no_grad():
        question = assemble(embed, question_layout(tok, QUESTION, style="icae-v2"), z.vectors, ft)
        reconstruction = assemble(embed, Layout([], "AE", [bos]), z.vectors, ae)
        chat = assemble(embed, question_layout(tok, QUESTION, task=None), embed(torch.tensor(context)), None)
    torch.testing.assert_close(llm_inputs[0], question)
    torch.testing.assert_close(llm_inputs[1], reconstruction)
    torch.testing.assert_close(llm_inputs[2], chat)


def test_default_checkpoint_prompts_as_before(tiny_compressor, llm_inputs):
    """Our own checkpoints: chat template around [vectors][FT], and [vectors][AE] <bos>."""
    z = tiny_compressor.compress(TEXT)
    tiny_compressor.answer(z, QUESTION, max_new_tokens=2)
    tiny_compressor.reconstruct(z, max_new_tokens=2)
    model, tok, embed = tiny_compressor.icformer, tiny_compressor.tokenizer, tiny_compressor.target.embed
    chat = Layout(ids(tok, "<|im_start|>user\nResponse the Prompt based on the below text:\n\n"), "FT",
                  ids(tok, f"\n\nPrompt: {QUESTION}<|im_end|>\n<|im_start|>assistant\n"))
    with torch.no_grad():
        torch.testing.assert_close(llm_inputs[0], assemble(embed, chat, z.vectors, model.task_embedding("FT")))
        ae = assemble(embed, Layout([], "AE", [tok.bos_token_id]), z.vectors, model.task_embedding("AE"))
    torch.testing.assert_close(llm_inputs[1], ae)


# --------------------------------------------------------------------------- training follows the style


@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_training_examples_use_the_compressor_style(tok, style, tmp_path, train_data):
    context = ids(tok, TEXT)
    assert autoencoding_example(tok, context, style).layout == reconstruction_layout(tok, style)
    example = question_example(tok, context, QUESTION, [5, 6], style)
    assert example.layout == question_layout(tok, QUESTION, style=style)
    assert example.target_ids == [5, 6, tok.eos_token_id]
    rows = [{"input": TEXT, "prompt": QUESTION, "answer": "Anna"}]
    config = tiny_train_config(tmp_path, train_data, stage="finetune")
    assert SampleStream(rows, tok, config, style).example(0).layout == question_layout(tok, QUESTION, style=style)
