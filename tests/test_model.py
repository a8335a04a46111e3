"""SASRec and its losses: masks, causality, padding invariance, shapes, variants, hand-computed losses."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.losses import LOSSES, bce_loss, bpr_loss, ce_loss, sampled_softmax_loss  # noqa: E402
from common.model import PAD, SASRec, SASRecArgs, attend, attention_mask, dropout  # noqa: E402

N_ITEMS = 30
MAX_LEN = 12



def make_model(seed: int = 0, **kw) -> SASRec:
    torch.manual_seed(seed)
    args = dict(n_items=N_ITEMS, hidden=16, layers=2, heads=2, dropout_attn=0.3, dropout_hidden=0.3,
                max_len=MAX_LEN, init_std=0.5)  # a large init_std so that positions differ clearly
    args.update(kw)
    return SASRec(SASRecArgs(**args)).eval()


def random_seqs(B: int, L: int, n_pad: list[int], seed: int = 1) -> torch.Tensor:
    """[B, L] item ids in 1..N_ITEMS, row b left-padded with n_pad[b] zeros."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (B, L), generator=g)
    for b, p in enumerate(n_pad):
        seq[b, :p] = PAD
    return seq


# ---------------------------------------------------------------- attention_mask

def test_attention_mask_shape_causal_and_padding():
    seq = torch.tensor([[0, 0, 3, 4, 5],
                        [1, 2, 3, 4, 5],
                        [0, 0, 0, 0, 7]])
    m = attention_mask(seq)
    B, L = seq.shape
    assert m.shape == (B, 1, L, L)
    assert m.dtype == torch.bool
    for b in range(B):
        for i in range(L):
            for j in range(L):
                expected = (j == i) or (j < i and seq[b, j].item() != PAD)
                assert m[b, 0, i, j].item() == expected, (b, i, j)
    # no query may see the future
    assert not torch.triu(m[:, 0], diagonal=1).any()
    # a padding key is visible only to itself
    for b in range(B):
        pad_keys = (seq[b] == PAD).nonzero().flatten()
        for j in pad_keys.tolist():
            assert m[b, 0, :, j].sum().item() == 1 and m[b, 0, j, j]


def test_fully_padded_row_is_finite():
    model = make_model()
    seq = torch.zeros(3, MAX_LEN, dtype=torch.long)
    seq[1, -3:] = torch.tensor([4, 5, 6])  # one normal row beside the padded ones
    with torch.no_grad():
        h = model(seq)
        scores = model.score_all(h[:, -1])
    assert torch.isfinite(h).all()
    assert torch.isfinite(scores).all()
    # also in training mode (dropout on): still no NaN
    model.train()
    h = model(seq)
    assert torch.isfinite(h).all()


# ---------------------------------------------------------------- causality and padding

def assert_causal(model: SASRec, L: int = 10, n_pad=(0, 3, 6)):
    seq = random_seqs(len(n_pad), L, list(n_pad))
    with torch.no_grad():
        base = model(seq)
        for t in range(max(n_pad) - 1, L - 1):
            changed = seq.clone()
            changed[:, t + 1] = changed[:, t + 1] % N_ITEMS + 1  # a different real item
            out = model(changed)
            assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-6), f"position <= {t} changed"
            diff = (out[:, t + 1] - base[:, t + 1]).abs().max(dim=-1).values  # [B]
            assert (diff > 1e-4).all(), f"position {t + 1} did not change: {diff}"


def test_causality_eval_mode():
    assert_causal(make_model())


@pytest.mark.parametrize("variant", [dict(pre_ln=True), dict(final_ln=True), dict(tied=False),
                                     dict(pre_ln=True, final_ln=True, tied=False, layers=3, heads=4)])
def test_variants_run_and_stay_causal(variant):
    model = make_model(**variant)
    seq = random_seqs(4, MAX_LEN, [0, 2, 5, MAX_LEN - 1])
    with torch.no_grad():
        h = model(seq)
        scores = model.score_all(h)
    assert h.shape == (4, MAX_LEN, 16)
    assert scores.shape == (4, MAX_LEN, N_ITEMS + 1)
    assert torch.isfinite(h).all() and torch.isfinite(scores).all()
    assert_causal(model)


@pytest.mark.parametrize("variant", [dict(), dict(pre_ln=True, final_ln=True, layers=3, heads=4)])
def test_last_position_alone_matches_the_full_forward(variant):
    """What recommending reads: the top block computes the last position only, with the same result."""
    model = make_model(**variant)
    seq = random_seqs(4, MAX_LEN, [0, 2, 5, MAX_LEN - 1])
    with torch.no_grad():
        full, last = model(seq), model(seq, last=True)
    assert last.shape == (4, 1, 16)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and it does not depend on how many users share a batch
        one_by_one = torch.cat([model(seq[i:i + 1], last=True) for i in range(4)])
    assert torch.equal(one_by_one, last)


def test_untied_scores_use_separate_table():
    model = make_model(tied=False)
    assert model.out_emb is not None
    assert model.output_embeddings().data_ptr() == model.out_emb.weight.data_ptr()
    assert model.output_embeddings().data_ptr() != model.item_emb.weight.data_ptr()
    h = torch.randn(5, 16)
    assert torch.allclose(model.score_all(h), h @ model.out_emb.weight.T)
    tied = make_model(tied=True)
    assert tied.out_emb is None
    assert torch.allclose(tied.score_all(h), h @ tied.item_emb.weight.T)


@pytest.mark.parametrize("variant", [dict(), dict(pre_ln=True, final_ln=True, tied=False)])
def test_left_padding_leaves_outputs_unchanged(variant):
    model = make_model(**variant)
    L = 7
    seq = random_seqs(3, L, [0, 2, 4])
    with torch.no_grad():
        base = model(seq)
        for extra in (1, 3, MAX_LEN - L):
            wide = torch.cat([torch.zeros(3, extra, dtype=torch.long), seq], dim=1)
            out = model(wide)
            assert out.shape == (3, L + extra, 16)
            assert torch.allclose(out[:, -1], base[:, -1], atol=1e-5), f"last output changed with {extra} pads"
            # every real position keeps its output, not only the last one
            real = wide[:, extra:] != PAD
            assert torch.allclose(out[:, extra:][real], base[real], atol=1e-5)


# ---------------------------------------------------------------- shapes and scoring

def test_forward_and_score_shapes():
    model = make_model(hidden=24, heads=3)
    B, L = 5, 9
    seq = random_seqs(B, L, [0, 1, 2, 3, 8])
    with torch.no_grad():
        h = model(seq)
    assert h.shape == (B, L, 24)
    last = h[:, -1]
    all_scores = model.score_all(last)
    assert all_scores.shape == (B, N_ITEMS + 1)
    items = torch.randint(0, N_ITEMS + 1, (B, 4))
    some = model.score_items(last, items)
    assert some.shape == (B, 4)
    assert torch.allclose(some, all_scores.gather(1, items), atol=1e-5)


def test_forward_rejects_too_long_sequence():
    model = make_model()
    with pytest.raises(AssertionError):
        model(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


def test_padding_row_of_embeddings_is_zero():
    model = make_model(tied=False)
    assert torch.count_nonzero(model.item_emb.weight[PAD]) == 0
    assert torch.count_nonzero(model.out_emb.weight[PAD]) == 0


def test_dropout_is_active_only_in_training():
    model = make_model(dropout_attn=0.5, dropout_hidden=0.5)
    seq = random_seqs(2, 8, [0, 3])
    with torch.no_grad():
        a, b = model(seq), model(seq)
        assert torch.equal(a, b)
        model.train()
        c = model(seq)
    assert not torch.allclose(a, c)


# ---------------------------------------------------------------- losses

def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bce_loss_by_hand():
    pos = torch.tensor([2.0, -1.0], dtype=torch.float64)
    neg = torch.tensor([[0.5], [1.0]], dtype=torch.float64)
    # bce = mean over n of [ -log σ(pos_n) - Σ_m log(1 - σ(neg_nm)) ]
    #     = ( [-log σ(2) - log(1 - σ(0.5))] + [-log σ(-1) - log(1 - σ(1))] ) / 2
    by_hand = ((-math.log(_sig(2.0)) - math.log(1 - _sig(0.5)))
               + (-math.log(_sig(-1.0)) - math.log(1 - _sig(1.0)))) / 2
    assert bce_loss(pos, neg).item() == pytest.approx(by_hand, rel=1e-12)
    # terms: 0.12693 + 0.97408 + 1.31326 + 1.31326 = 3.72753, halved
    assert by_hand == pytest.approx(1.86376, abs=1e-4)


def test_bce_loss_sums_over_negatives():
    pos = torch.tensor([0.3, -2.0, 1.5], dtype=torch.float64)
    neg = torch.tensor([[0.5, -0.7], [1.0, 2.0], [-3.0, 0.0]], dtype=torch.float64)
    # per position: -log σ(p) - log(1 - σ(n1)) - log(1 - σ(n2)); then the mean over the 3 positions
    terms = [-math.log(_sig(p)) - sum(math.log(1 - _sig(n)) for n in row)
             for p, row in zip(pos.tolist(), neg.tolist())]
    assert bce_loss(pos, neg).item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)


def test_bpr_loss_by_hand():
    pos = torch.tensor([2.0, -1.0], dtype=torch.float64)
    neg = torch.tensor([[0.5], [1.0]], dtype=torch.float64)
    # bpr = mean over (n, m) of -log σ(pos_n - neg_nm) = ( -log σ(2 - 0.5) - log σ(-1 - 1) ) / 2
    by_hand = (-math.log(_sig(1.5)) - math.log(_sig(-2.0))) / 2
    assert bpr_loss(pos, neg).item() == pytest.approx(by_hand, rel=1e-12)


def test_bpr_loss_averages_over_negatives():
    pos = torch.tensor([0.3, -2.0], dtype=torch.float64)
    neg = torch.tensor([[0.5, -0.7, 4.0], [1.0, 2.0, -2.5]], dtype=torch.float64)
    # mean over all 6 (position, negative) pairs of -log σ(p - n)
    terms = [-math.log(_sig(p - n)) for p, row in zip(pos.tolist(), neg.tolist()) for n in row]
    assert bpr_loss(pos, neg).item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)


def test_losses_are_stable_for_large_logits():
    pos = torch.tensor([80.0, -80.0])
    neg = torch.tensor([[-80.0], [80.0]])
    for fn in (bce_loss, bpr_loss):
        v = fn(pos, neg)
        assert torch.isfinite(v)
    # the bad position dominates: -log σ(-80) - log(1 - σ(80)) = 160 (to float precision), mean 80
    assert bce_loss(pos, neg).item() == pytest.approx(80.0, rel=1e-4)
    assert bpr_loss(pos, neg).item() == pytest.approx(80.0, rel=1e-4)  # (0 + 160) / 2


def test_ce_loss_by_hand_ignores_padding_column():
    # logits over ids 0..3, id 0 (padding) at -inf: loss_n = -log( e^{x_t} / Σ_{v>=1} e^{x_v} )
    logits = torch.tensor([[-math.inf, 1.0, 2.0, 0.5], [-math.inf, -1.0, 0.0, 3.0]], dtype=torch.float64)
    target = torch.tensor([2, 1])
    z0 = math.exp(1.0) + math.exp(2.0) + math.exp(0.5)
    z1 = math.exp(-1.0) + math.exp(0.0) + math.exp(3.0)
    by_hand = (-math.log(math.exp(2.0) / z0) - math.log(math.exp(-1.0) / z1)) / 2
    assert ce_loss(logits, target).item() == pytest.approx(by_hand, rel=1e-12)


def test_ce_loss_exclusion_by_hand():
    # row 0 leaves out ids 3 (and padding): loss_0 = -log( e^{x_2} / (e^{x_1} + e^{x_2}) )
    logits = torch.tensor([[0.3, 1.0, 2.0, 5.0], [-1.0, -1.0, 0.0, 3.0]], dtype=torch.float64)
    target, exclude = torch.tensor([2, 3]), torch.tensor([[3, 0], [0, 0]])
    t0 = -math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0)))
    t1 = -math.log(math.exp(3.0) / (math.exp(-1.0) + math.exp(0.0) + math.exp(3.0)))
    assert ce_loss(logits, target, exclude).item() == pytest.approx((t0 + t1) / 2, rel=1e-12)


def test_fused_ce_loss_matches_log_softmax_and_its_gradient():
    torch.manual_seed(0)
    N, V, H = 7, 12, 4
    h, w = torch.randn(N, H, dtype=torch.float64, requires_grad=True), torch.randn(V, H, dtype=torch.float64)
    target = torch.randint(1, V, (N,))
    exclude = torch.randint(0, V, (N, 5))
    exclude = torch.where(exclude == target[:, None], 0, exclude)  # repeats and padding among the ids
    reference = F.cross_entropy((h @ w.T).scatter(1, exclude, -math.inf), target)
    (g_ref,) = torch.autograd.grad(reference, h)
    fused = ce_loss(h @ w.T, target, exclude)
    (g_fused,) = torch.autograd.grad(fused, h)
    assert fused.item() == pytest.approx(reference.item(), rel=1e-12)
    assert torch.allclose(g_fused, g_ref, rtol=1e-10, atol=1e-12)
    logits = torch.randn(N, V, dtype=torch.float64, requires_grad=True)
    ce_loss(logits * 1.0, target, exclude).backward()
    assert (logits.grad.gather(1, exclude) == 0).all(), "an excluded id gets no gradient"
    assert torch.allclose(logits.grad.sum(1), torch.zeros(N, dtype=torch.float64), atol=1e-12)  # softmax - one-hot


def test_ce_loss_over_no_rows_is_zero():
    logits = torch.zeros(0, 5, requires_grad=True)
    loss = ce_loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()


def test_sampled_softmax_by_hand_and_masked_negatives():
    # loss_n = -log( e^{pos_n} / (e^{pos_n} + Σ_m e^{neg_nm}) ); a -inf negative adds e^{-inf} = 0
    pos = torch.tensor([1.0, -0.5], dtype=torch.float64)
    neg = torch.tensor([[0.0, -math.inf, 2.0], [0.5, 0.5, -1.0]], dtype=torch.float64)
    t0 = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.0) + math.exp(2.0)))
    t1 = -math.log(math.exp(-0.5) / (math.exp(-0.5) + 2 * math.exp(0.5) + math.exp(-1.0)))
    assert sampled_softmax_loss(pos, neg).item() == pytest.approx((t0 + t1) / 2, rel=1e-12)


def test_loss_registry_points_at_functions():
    assert LOSSES["bce"].fn is bce_loss and LOSSES["bce"].kind == "sampled"
    assert LOSSES["bpr"].fn is bpr_loss and LOSSES["bpr"].kind == "sampled"


def test_losses_have_gradients_in_the_right_direction():
    pos = torch.tensor([0.0, 0.0], requires_grad=True)
    neg = torch.tensor([[0.0], [0.0]], requires_grad=True)
    for fn in (bce_loss, bpr_loss):
        pos.grad = neg.grad = None
        fn(pos, neg).backward()
        assert (pos.grad < 0).all(), "raising a positive score must lower the loss"
        assert (neg.grad > 0).all(), "raising a negative score must raise the loss"


@pytest.mark.parametrize("p, keep_rate", [
    (0.3, 1 - 19_661 / 2 ** 16),  # not a multiple of 2^-8: 16 bits, p in steps of 2^-16
    (0.5, 0.5),  # one bit: exactly p
    (0.25, 0.75),  # two bits
    (0.75, 0.25),
    (0.125, 0.875),  # four bits
    (26 / 256, 1 - 26 / 256),  # eight bits
])
def test_dropout_zeroes_about_p_scales_the_rest_and_routes_the_gradient_through_the_mask(p, keep_rate):
    x = torch.rand(200, 500) + 0.5  # no zero before dropout
    assert dropout(x, p, training=False) is x and dropout(x, 0.0, training=True) is x
    torch.manual_seed(0)
    x.requires_grad_(True)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.01  # 100,000 draws: the std of the share is <= 0.0016
    both = (kept[:, :-1] & kept[:, 1:]).float().mean().item()  # neighbours share a random byte, not a decision
    assert abs(both - (1 - p) ** 2) < 0.01
    torch.testing.assert_close(y[kept], x[kept] / keep_rate)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / keep_rate)
    torch.manual_seed(0)
    assert torch.equal(dropout(x.detach(), p, training=True) != 0, kept), "the same seed, the same mask"
    torch.manual_seed(0)
    half = dropout(x.detach().bfloat16(), p, training=True)  # bf16 stays bf16, with the same mask
    assert half.dtype == torch.bfloat16 and torch.equal(half != 0, kept)


def test_attention_with_dropout_on_cpu_drops_weights_of_the_masked_softmax():
    """With v = the identity, attend returns its (dropped-out) weights: each is 0 or the softmax weight
    scaled by 1 / (1 - p), masked keys are always 0, and about p of the allowed ones are dropped."""
    torch.manual_seed(0)
    B, nh, L = 64, 2, 12
    q, k = torch.randn(B, nh, L, 8), torch.randn(B, nh, L, 8)
    v = torch.eye(L).expand(B, nh, L, L)
    seq = torch.randint(1, 50, (B, L))
    seq[:, :4] = PAD
    mask = attention_mask(seq)
    w = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # no dropout: the weights themselves
    torch.testing.assert_close(attend(q, k, v, mask, 0.0), w)
    d = attend(q, k, v, mask, 0.25)
    allowed = mask.expand_as(d)
    assert (d[~allowed] == 0).all()
    kept = d != 0
    torch.testing.assert_close(d[kept], w[kept] / 0.75)
    assert abs(1 - kept[allowed].float().mean().item() - 0.25) < 0.03  # ~5,000 allowed weights


@pytest.mark.parametrize("hidden", [16, 64])
def test_score_product_rows_do_not_depend_on_the_batch(hidden):
    """Each user's scores are the same to the bit whatever batch, and whatever place in it, they come in
    (here 1 to 600 rows, across block edges), under autocast too, and equal the float64 product to float32
    rounding."""
    from common.recommend import SCORE_BLOCK, score_product
    gen = torch.Generator().manual_seed(0)
    table, h = torch.randn(500, hidden, generator=gen), torch.randn(600, hidden, generator=gen)
    whole = score_product(h, table)
    torch.testing.assert_close(whole, (h.double() @ table.double().T).float(), rtol=1e-5, atol=1e-5)
    for n in (1, 3, SCORE_BLOCK - 1, SCORE_BLOCK + 1, 600):
        rows = torch.randperm(600, generator=gen)[:n]
        assert torch.equal(score_product(h[rows], table), whole[rows]), n
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(score_product(h[:7], table), whole[:7]), "the product runs outside autocast"
