"""Encoder relative-position attention: exact against the official formulation (explicit [T,T,hd] table), padding,
dropout, gradients; activation checkpointing gives the same gradients; bf16 runs; fused SDPA where it applies."""
import pytest
import torch
import torch.nn.functional as F

from fairseq_xmodal.models import modules
from fairseq_xmodal.models.speecht5 import SpeechT5Classifier, SpeechT5TinyConfig

B, T, D, H, M = 3, 37, 32, 4, 8  # T > 2M: the clamp of far offsets is exercised
LENGTHS = [37, 30, 9]


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=g, requires_grad=True)
    pos_k = (0.5 * torch.randn(2 * M, D // H, generator=g)).requires_grad_()
    pad = torch.arange(T)[None, :] >= torch.tensor(LENGTHS)[:, None]  # True = pad
    return x, pos_k, pad


def naive_attention(att, x, pad, pos_k, keep=None):
    """The official computation written out: q scaled, logits = q.k^T + q.pos_k[i,j]^T with an explicit [T,T,hd]
    table, padded keys -inf, softmax in fp32, optional dropout keep-mask, . v, out_proj."""
    split = lambda t: t.view(t.size(0), t.size(1), H, D // H).transpose(1, 2)  # noqa: E731
    q, k, v = split(att.q_proj(x)) * att.scaling, split(att.k_proj(x)), split(att.v_proj(x))
    rel = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    table = pos_k[rel.clamp(-M, M - 1) + M]  # [T,T,hd]
    logits = q @ k.transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", q, table)
    logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1).type_as(q)
    if keep is not None:
        probs = probs * keep
    out = (probs @ v).transpose(1, 2).reshape(x.shape)
    return att.out_proj(out)


def relative_position_bias_reference(q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """The official formulation (materialises [T,T,hd]), the reference for modules.relative_position_bias."""
    T, M = q.size(2), pos_k.size(0) // 2
    rel = torch.arange(T, device=q.device)[:, None] - torch.arange(T, device=q.device)[None, :]
    table = pos_k[rel.clamp(-M, M - 1) + M]  # [T,T,hd]
    return torch.einsum("bhid,ijd->bhij", q, table.to(q.dtype))


def grads(fn, att, x, pos_k):
    for t in [x, pos_k, *att.parameters()]:
        t.grad = None
    y = fn()
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * w).sum().backward()
    return y.detach(), [t.grad.clone() for t in [x, pos_k, *att.parameters()]]


def assert_close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


def test_bias_equals_official_table():
    g = torch.Generator().manual_seed(2)
    for t in (5, 40):  # shorter and longer than the 2M=16 table
        q, pos_k = torch.randn(2, 3, t, 8, generator=g), torch.randn(16, 8, generator=g)
        torch.testing.assert_close(modules.relative_position_bias(q, pos_k),
                                   relative_position_bias_reference(q, pos_k), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("recompute", [True, False], ids=["recompute-function", "sdpa"])
def test_attention_matches_naive_with_padding(inputs, recompute):
    x, pos_k, pad = inputs
    torch.manual_seed(0)
    att = modules.MultiheadAttention(D, H, dropout=0.0)
    att.recompute = recompute
    y, g = grads(lambda: att(x, x, pad, pos_k), att, x, pos_k)
    y_ref, g_ref = grads(lambda: naive_attention(att, x, pad, pos_k), att, x, pos_k)
    assert_close([y] + g, [y_ref] + g_ref)
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in g)


def test_recompute_function_dropout_matches_naive(inputs):
    """Training with attention dropout: the mask regenerated in backward is the one used in forward."""
    x, pos_k, pad = inputs
    torch.manual_seed(0)
    att = modules.MultiheadAttention(D, H, dropout=0.3).train()
    att.recompute = True
    torch.manual_seed(7)
    y, g = grads(lambda: att(x, x, pad, pos_k), att, x, pos_k)
    torch.manual_seed(7)
    seed = int(torch.randint(2 ** 62, ()))  # what the function draws from the global RNG
    keep = modules._dropout_keep((B, H, T, T), 0.3, seed, x.device)
    y_ref, g_ref = grads(lambda: naive_attention(att, x, pad, pos_k, keep), att, x, pos_k)
    assert_close([y] + g, [y_ref] + g_ref)
    no_drop, _ = grads(lambda: naive_attention(att, x, pad, pos_k), att, x, pos_k)
    assert not torch.allclose(y, no_drop)  # dropout did something


def test_recompute_function_gradcheck():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 1, 7, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pos_k = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    idx = modules.relative_position_index(7, 7, 2)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    fn = lambda q, k, v, p: modules.RelativePositionAttention.apply(q, k, v, p, idx, pad, 0.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, pos_k))


def tiny_model(**overrides):
    cfg = SpeechT5TinyConfig(**{"dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1,
                                "encoder_layerdrop": 0.3, **overrides})
    torch.manual_seed(0)
    return SpeechT5Classifier(cfg, text_vocab_size=20, text_padding_idx=1, num_classes=5)


def waveforms(lengths=(9000, 6000)):
    g = torch.Generator().manual_seed(4)
    source = torch.zeros(len(lengths), max(lengths))
    pad = torch.ones(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n], pad[i, :n] = 0.1 * torch.randn(n, generator=g), False
    return source, pad


def train_step_grads(model, source, pad, seed=11):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout / layerdrop draws in both runs
    logits = model(source, pad)
    F.cross_entropy(logits, torch.tensor([1, 3])).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointed_and_plain_encoder_give_same_gradients():
    source, pad = waveforms()
    plain, ckpt = tiny_model(), tiny_model(checkpoint_activations=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.encoder.checkpoint_activations and ckpt.speech_encoder_prenet.feature_extractor.checkpoint_activations
    y1, g1 = train_step_grads(plain, source, pad)
    y2, g2 = train_step_grads(ckpt, source, pad)
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=1e-6)
    assert g1.keys() == g2.keys() and any(k.startswith("encoder.layers.1.") for k in g1)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_train_and_eval(dtype):
    """common.bf16/fp16 cast the model and inputs: every module must run in that dtype (GroupNorm, GELU and the
    attention softmax in fp32 inside) and stay finite."""
    model = tiny_model().to(dtype)
    source, pad = waveforms()
    source = source.to(dtype)
    logits, g = train_step_grads(model, source, pad)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert g and all(t.dtype == dtype and torch.isfinite(t).all() for t in g.values())
    ref = tiny_model().eval()
    with torch.no_grad():
        out = model.eval()(source, pad)
        expect = ref(source.float(), pad)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expect, atol=0.05, rtol=0.05)


def test_attention_paths(monkeypatch):
    """Evaluation: every attention is one SDPA call whose mask needs no grad (fused kernel on CPU and CUDA).
    Training on CPU: the encoder's relative attention is the recompute function, never SDPA's math kernel."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, **kw):
        calls.append((q.shape[2], attn_mask is not None and attn_mask.requires_grad, dropout_p))
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, **kw)

    monkeypatch.setattr(modules.F, "scaled_dot_product_attention", spy)
    model = tiny_model()
    source, pad = waveforms()
    with torch.no_grad():
        model.eval()(source, pad)
    n_enc, n_dec = len(model.encoder.layers), len(model.decoder.layers)
    assert len(calls) == n_enc + 2 * n_dec
    assert not any(grad_mask for _, grad_mask, _ in calls)
    if hasattr(torch, "_fused_sdp_choice"):  # the backend SDPA picks for these inputs (0 = math)
        q = torch.randn(2, 4, 1, 16)
        k = torch.randn(2, 4, 20, 16)
        mask = torch.zeros(2, 1, 1, 20).masked_fill_(torch.rand(2, 1, 1, 20) > 0.7, float("-inf"))
        assert torch._fused_sdp_choice(q, k, k, mask, 0.0, False) != 0  # decoder: 1 query + padding mask
    recompute = []
    apply = modules.RelativePositionAttention.apply
    monkeypatch.setattr(modules.RelativePositionAttention, "apply",
                        lambda *args: recompute.append(1) or apply(*args))
    for dropout in (0.1, 0.0):  # with dropout its forward is plain ops, without it a fused SDPA call
        calls.clear(), recompute.clear()
        model = tiny_model(attention_dropout=dropout, encoder_layerdrop=0.0)
        train_step_grads(model, source, pad)
        assert len(recompute) == n_enc  # the encoder used the recompute function in every layer
        assert not any(grad_mask for _, grad_mask, _ in calls)  # never SDPA's math fallback for a grad mask
        assert len([c for c in calls if c[0] > 1]) == (n_enc if dropout == 0 else 0)
