"""IC-Former forward pass: shapes, the digest-causal mask, RoPE positions, chunking, persistence."""

import pytest
import torch

from icformer import ICFormerConfig, ICFormerModel
from icformer.compressors.modeling_icformer import chunk_bounds

H, K, L = 32, 4, 16


def make_model(**overrides) -> ICFormerModel:
    torch.manual_seed(0)
    cfg = dict(hidden_size=H, num_heads=4, intermediate_size=64, num_digest_tokens=K, chunk_size=L, digest_init_std=0.02)
    cfg.update(overrides)
    return ICFormerModel(ICFormerConfig(**cfg)).eval()


def test_config_for_llm_takes_the_llms_sizes():
    class LlmConfig:
        hidden_size, num_attention_heads, intermediate_size = 576, 9, 1536

    cfg = ICFormerConfig.for_llm(LlmConfig(), num_digest_tokens=32, chunk_size=128)
    assert (cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.k, cfg.L) == (576, 9, 1536, 32, 128)
    assert cfg.num_layers == 3 and cfg.rms_norm_eps == 1e-6 and cfg.rope_theta == 10000.0


def test_paper_defaults_initialise_digests_and_task_vectors_to_zero():
    model = ICFormerModel(ICFormerConfig(hidden_size=H, num_heads=4, intermediate_size=64, num_digest_tokens=K, chunk_size=L))
    assert torch.count_nonzero(model.digest_embeddings) == 0
    assert set(model.task_embeddings) == {"AE", "FT"}
    assert all(torch.count_nonzero(v) == 0 for v in model.task_embeddings.values())
    assert torch.all(model.norm.weight == 1.0)


def test_forward_shape():
    model = make_model()
    out, _ = model(torch.randn(3, 10, H))
    assert out.shape == (3, K, H)


def test_digest_never_sees_later_digests_and_sees_whole_context():
    model = make_model()
    x = torch.randn(1, 10, H)
    _, attentions = model(x, return_attentions=True)
    for weights in attentions:  # [B, heads, k, n+k]
        context_part, digest_part = weights[..., :10], weights[..., 10:]
        assert torch.all(context_part > 0), "every digest attends to every context token"
        later = torch.ones(K, K, dtype=torch.bool).triu(1)
        assert torch.all(digest_part[..., later] == 0), "digest i must not attend to digest j > i"
        assert torch.all(digest_part[..., ~later] > 0)


def test_mask_behaviour_changing_a_digest_only_affects_itself_and_later_ones():
    model = make_model()
    x = torch.randn(1, 10, H)
    base, _ = model(x)
    with torch.no_grad():
        model.digest_embeddings[2] += 1.0
    changed, _ = model(x)
    assert torch.allclose(base[0, :2], changed[0, :2], atol=1e-6)
    assert not torch.allclose(base[0, 2:], changed[0, 2:], atol=1e-4)


def test_changing_any_context_token_changes_every_digest():
    model = make_model()
    x = torch.randn(1, 10, H)
    base, _ = model(x)
    x2 = x.clone()
    x2[0, 7] += 1.0
    changed, _ = model(x2)
    assert torch.all((base - changed).abs().amax(-1) > 1e-6)


def test_rope_positions_keys_then_digests_queries_last_k():
    model = make_model()
    seen = []
    model.rope.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    mask = torch.tensor([[True] * 10, [True] * 6 + [False] * 4])
    model(torch.randn(2, 10, H), mask)
    query_pos, key_pos = seen
    assert query_pos[0].tolist() == list(range(10, 10 + K))
    assert query_pos[1].tolist() == list(range(6, 6 + K))  # restarts after the true length
    assert key_pos[0].tolist() == list(range(10 + K))
    assert key_pos[1, :6].tolist() == list(range(6)) and key_pos[1, 10:].tolist() == list(range(6, 6 + K))


def test_padding_is_invisible():
    model = make_model()
    x = torch.randn(1, 6, H)
    alone, _ = model(x)
    padded = torch.cat([x, torch.randn(1, 4, H)], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    with_pad, _ = model(padded, mask)
    assert torch.allclose(alone, with_pad, atol=1e-5)


@pytest.mark.parametrize(
    "n, expected_chunks", [(1, 1), (L - 1, 1), (L, 1), (L + 1, 2), (3 * L, 3), (3 * L + 1, 4)]
)
def test_chunking_gives_k_vectors_per_chunk(n, expected_chunks):
    bounds = chunk_bounds(n, L)
    assert len(bounds) == expected_chunks
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [e - s for s, e in bounds]
    assert max(sizes) <= L and max(sizes) - min(sizes) <= expected_chunks  # near-equal
    (vectors,) = make_model().compress([torch.randn(n, H)])
    assert vectors.shape == (expected_chunks * K, H)


def test_chunking_rejects_empty_and_oversized_chunks():
    with pytest.raises(ValueError):
        chunk_bounds(0, L)
    with pytest.raises(ValueError, match="exceeds chunk_size"):
        make_model()(torch.randn(1, L + 1, H))


def test_batched_compression_equals_one_at_a_time():
    model = make_model()
    contexts = [torch.randn(n, H) for n in (3, L, 2 * L + 5, 7)]
    together = model.compress(contexts)
    for ctx, vec in zip(contexts, together):
        (alone,) = model.compress([ctx])
        assert vec.shape == alone.shape
        assert torch.allclose(vec, alone, atol=1e-5)


def llama_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE as Llama writes it, x [1, heads, T, d]: x * cos + rotate_half(x) * sin."""
    angles = positions.to(inv_freq.dtype)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1).to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * angles.cos() + rotated * angles.sin()


def reference_digests(model: ICFormerModel, chunk: torch.Tensor) -> torch.Tensor:
    """One unpadded chunk as the paper writes it: keys/values = [context; digests], all per chunk."""
    n, k, freqs = len(chunk), model.config.num_digest_tokens, model.rope.inv_freq
    digests = model.digest_embeddings.to(chunk.dtype)[None]
    keys_values = torch.cat([chunk[None], digests], dim=1)
    mask = torch.cat([torch.ones(k, n, dtype=torch.bool), torch.ones(k, k, dtype=torch.bool).tril()], dim=-1)
    x = digests
    for layer in model.layers:
        attn = layer.attn
        heads = lambda t: t.view(1, -1, attn.num_heads, attn.head_dim).transpose(1, 2)  # noqa: E731
        q = llama_rope(heads(attn.q_proj(layer.query_norm(x))), torch.arange(n, n + k), freqs)
        kv = layer.kv_norm(keys_values)
        keys, values = llama_rope(heads(attn.k_proj(kv)), torch.arange(n + k), freqs), heads(attn.v_proj(kv))
        scores = (q @ keys.transpose(-1, -2) / attn.head_dim**0.5).masked_fill(~mask, float("-inf"))
        x = x + attn.o_proj((scores.softmax(-1) @ values).transpose(1, 2).reshape(1, k, -1))
        x = x + layer.ffn(layer.ffn_norm(x))
    return model.norm(x)[0]


@pytest.mark.parametrize("lengths", [(L,), (5,), (3, L, 1, 9), (7, 2, 7)])
def test_batched_forward_with_shared_digest_work_equals_the_per_chunk_reference(lengths):
    """Digest projections computed once per call (and padding) change nothing, gradients included."""
    model = make_model().double()
    chunks = [torch.randn(n, H, dtype=torch.float64) for n in lengths]
    padded = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True)
    mask = torch.arange(padded.shape[1]) < torch.tensor(lengths)[:, None]
    weights = torch.randn(len(lengths), K, H, dtype=torch.float64)

    batched, _ = model(padded, mask)
    (batched * weights).sum().backward()
    batched_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference = torch.stack([reference_digests(model, c) for c in chunks])
    (reference * weights).sum().backward()

    torch.testing.assert_close(batched, reference, rtol=1e-12, atol=1e-12)
    assert batched_grads.keys() == {name for name, p in model.named_parameters() if p.grad is not None}
    # Gradients agree to fp32 precision only: RMSNorm computes in fp32 even for float64 inputs,
    # and the shared digest rows sum their gradient over chunks before that norm, not after.
    for name, p in model.named_parameters():
        if p.grad is not None:
            atol = 1e-6 * p.grad.abs().max().item()
            torch.testing.assert_close(batched_grads[name], p.grad, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_writes_keys_in_place_with_the_same_bits_as_training(dtype):
    """Without autograd, RoPE writes keys straight into their buffer; with it, it concatenates."""
    model = make_model().to(dtype)
    lengths = (3, L, 1, 9)
    chunks = [torch.randn(n, H, dtype=dtype) for n in lengths]
    padded = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True)
    mask = torch.arange(padded.shape[1]) < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        inference, _ = model(padded, mask)
    training, _ = model(padded, mask)
    assert training.requires_grad and not inference.requires_grad
    assert torch.equal(inference, training.detach())


def test_frozen_inference_keeps_the_digest_kv_until_a_weight_it_reads_changes():
    """Kept digest k/v give the same bits as fresh ones, and go stale with no weight change."""
    model = make_model().requires_grad_(False)  # frozen, as ContextCompressor keeps it
    padded, mask = torch.randn(2, L, H), torch.ones(2, L, dtype=torch.bool)

    def kept() -> list:
        return [layer._kept_digest_kv for layer in model.layers]

    def fresh() -> torch.Tensor:
        for layer in model.layers:
            layer._kept_digest_kv = None
        with torch.no_grad():
            return model(padded, mask)[0]

    with torch.no_grad():
        before = model(padded, mask)[0]
        first = [entry[1] for entry in kept()]
        model(padded, mask)
        assert all(a is b[1] for a, b in zip(first, kept()))  # kept: the same tensors
        assert torch.equal(before, fresh())
        for step, change in enumerate([
            lambda: model.layers[1].attn.v_proj.weight.add_(0.1),
            lambda: model.digest_embeddings.mul_(2),
            lambda: model.layers[2].kv_norm.weight.fill_(0.5),
            lambda: model.load_state_dict(make_model(initializer_range=0.05).state_dict()),
            lambda: model.double(),  # same tensors' ids and versions, another dtype
        ]):
            old = model(padded, mask)[0]
            change()
            padded = padded.to(model.digest_embeddings.dtype)
            after = model(padded, mask)[0]
            assert not torch.equal(after.float(), old.float()), step
            assert torch.equal(after, fresh()), step
    model(padded, mask)  # with autograd: computed, never kept
    assert kept() == [None] * len(model.layers)
    model.requires_grad_(True)
    with torch.no_grad():  # trainable weights (say, evaluation during training): never kept
        model(padded, mask)
    assert kept() == [None] * len(model.layers)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = make_model(output_norm_init=0.136)
    with torch.no_grad():
        model.task_embeddings["FT"].normal_()
    model.save_pretrained(tmp_path / "ckpt", trained=True, steps=3)
    loaded = ICFormerModel.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.trained is True and loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    x = torch.randn(2, 9, H)
    assert torch.equal(model(x)[0], loaded(x)[0])


def test_loading_a_non_checkpoint_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an IC-Former checkpoint"):
        ICFormerModel.from_pretrained(tmp_path)


def test_a_compressor_without_layers_is_refused():
    with pytest.raises(ValueError, match="num_layers must be positive"):
        ICFormerConfig(hidden_size=H, num_heads=4, num_layers=0)


def test_bad_head_count_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        ICFormerConfig(hidden_size=30, num_heads=4)


def test_own_windows_divide_each_true_length_among_the_digests():
    from icformer.compressors.modeling_icformer import own_windows

    windows = own_windows(torch.tensor([16, 10, 2]), k=4, n=16)
    assert windows[0].sum(-1).tolist() == [4, 4, 4, 4] and windows[0, 1, 4:8].all()
    assert windows[1].sum(-1).tolist() == [2, 3, 2, 3] and not windows[1, :, 10:].any()
    assert windows[2].sum(-1).tolist() == [1, 1, 1, 1]  # shorter than k: each digest still reads a token


def test_locality_prior_restricts_the_first_layers_to_each_digests_own_window():
    model = make_model(local_window_layers=2, num_layers=3)
    x = torch.randn(1, 8, H)
    _, attentions = model(x, return_attentions=True)
    for layer in range(2):
        context_part = attentions[layer][0, :, :, :8]  # [heads, k, n]
        for i in range(K):
            own = torch.zeros(8, dtype=torch.bool)
            own[2 * i : 2 * i + 2] = True
            assert torch.all(context_part[:, i, own] > 0) and torch.all(context_part[:, i, ~own] == 0)
    assert torch.all(attentions[2][..., :8] > 0), "later layers read the whole chunk, as in the paper"
    base, _ = model(x)
    x2 = x.clone()
    x2[0, 7] += 1.0  # token 7 is in digest 3's window only; the global last layer still mixes it in
    changed, _ = model(x2)
    assert torch.all((base - changed).abs().amax(-1) > 1e-6)


def test_a_locality_prior_beyond_the_layer_count_is_refused():
    with pytest.raises(ValueError, match="local_window_layers"):
        make_model(local_window_layers=4)
