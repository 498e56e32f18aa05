"""focal_rpn.losses against independent references: torchvision, fvcore, F.*, float64 autograd."""
import math

import pytest
import torch
import torchvision
from fvcore.nn import sigmoid_focal_loss_star as fvcore_fl_star
from hypothesis import given, settings, strategies as st
from torch.nn import functional as F

from focal_rpn import losses
from focal_rpn.losses import sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss

ALPHA_GAMMA = [(0.25, 2.0), (0.75, 0.0), (-1.0, 2.0), (0.5, 0.5), (0.25, 5.0)]
REDUCTIONS = ["none", "mean", "sum"]


@pytest.fixture(params=[True, False], ids=["compiled", "eager"])
def compile_mode(request, monkeypatch):
    """Runs a test with the torch.compile'd kernels (also for small inputs) or the eager ones."""
    monkeypatch.setattr(losses, "_COMPILE_MIN_NUMEL", 0)
    losses.set_compile(request.param)
    yield request.param
    losses.set_compile(True)


def _inputs(n=300, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g) * 6
    x[0, :] = 100.0
    x[1, :] = -100.0
    x[2, :3] = torch.tensor([30.0, -30.0, 0.0])[:k]
    t = (torch.rand(n, k, generator=g) < 0.3).float()
    t[0, ::2] = 1.0  # saturated positives and negatives, both signs
    t[1, ::2] = 1.0
    return x, t


def _value_and_grad(fn, x, *args, **kw):
    x = x.clone().requires_grad_()
    out = fn(x, *args, **kw)
    out.sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("alpha,gamma", ALPHA_GAMMA)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_matches_torchvision(alpha, gamma, reduction, compile_mode):
    x, t = _inputs()
    ours, g_ours = _value_and_grad(sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    ref, g_ref = _value_and_grad(torchvision.ops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    assert torch.isfinite(ours).all() and torch.isfinite(g_ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # torchvision's autograd gives 0 * inf = NaN where 1 - p_t underflows to 0 with γ < 1;
    # compare where it is defined, and there our gradient is the analytic limit 0.
    finite = torch.isfinite(g_ref)
    if gamma >= 1:
        assert finite.all()
    torch.testing.assert_close(g_ours[finite], g_ref[finite], rtol=1e-5, atol=1e-6)


def test_soft_targets_match_torchvision():
    x, _ = _inputs()
    t = torch.rand_like(x)
    ours, g_ours = _value_and_grad(sigmoid_focal_loss, x, t, 0.25, 2.0, "sum")
    ref, g_ref = _value_and_grad(torchvision.ops.sigmoid_focal_loss, x, t, 0.25, 2.0, "sum")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


def test_gamma0_no_alpha_is_bce():
    x, t = _inputs()
    ours, g_ours = _value_and_grad(sigmoid_focal_loss, x, t, -1, 0.0, "mean")
    ref, g_ref = _value_and_grad(F.binary_cross_entropy_with_logits, x, t, reduction="mean")
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_integer_labels_equal_one_hot_targets():
    x, _ = _inputs(k=4)
    labels = torch.randint(0, 5, (x.shape[0],))  # 4 = background: negative for every class
    one_hot = F.one_hot(labels, 5)[:, :4].float()
    a, ga = _value_and_grad(sigmoid_focal_loss, x, labels, 0.25, 2.0, "sum")
    b, gb = _value_and_grad(torchvision.ops.sigmoid_focal_loss, x, one_hot, 0.25, 2.0, "sum")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ga, gb)
    c, gc = _value_and_grad(sigmoid_focal_loss_star, x, labels, 2.0, 1.0, "sum")
    d, gd = _value_and_grad(sigmoid_focal_loss_star, x, one_hot, 2.0, 1.0, "sum")
    torch.testing.assert_close(c, d)
    torch.testing.assert_close(gc, gd)


@pytest.mark.parametrize("ignore", [False, True])
def test_softmax_gamma0_is_cross_entropy(ignore, compile_mode):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 9, generator=g) * 10
    y = torch.randint(0, 9, (64,), generator=g)
    if ignore:
        y[::5] = -1
    for red in REDUCTIONS:
        ours, g_ours = _value_and_grad(softmax_focal_loss, z, y, None, 0.0, red)
        ref, g_ref = _value_and_grad(F.cross_entropy, z, y, reduction=red, ignore_index=-1)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(g_ours, g_ref)
        if ignore:
            assert (g_ours[::5] == 0).all()


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1, 2.0), (0.5, 0.5), (0.25, 5.0)])
def test_two_class_softmax_equals_sigmoid(alpha, gamma):
    x, t = _inputs(k=1)
    x, t = x[:, 0], t[:, 0]
    logits = torch.stack([x, torch.zeros_like(x)], dim=1).requires_grad_()
    labels = torch.where(t > 0, 0, 1)  # 0 = object, 1 = background (the last class)
    soft = softmax_focal_loss(logits, labels, None if alpha < 0 else alpha, gamma, "sum")
    soft.backward()
    sig, g_sig = _value_and_grad(sigmoid_focal_loss, x, t, alpha, gamma, "sum")
    torch.testing.assert_close(soft.detach(), sig, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(logits.grad[:, 0], g_sig, rtol=1e-5, atol=1e-6)


def test_softmax_alpha_tensor_and_float():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(32, 4, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    p = F.softmax(z.double(), 1).gather(1, y[:, None])[:, 0]
    ref = -(w.double()[y] * (1 - p) ** 2 * p.log())
    torch.testing.assert_close(softmax_focal_loss(z, y, w, 2.0).double(), ref, rtol=1e-5, atol=1e-6)
    wf = torch.tensor([0.25, 0.25, 0.25, 0.75])  # float alpha: background (last) gets 1 - alpha
    torch.testing.assert_close(softmax_focal_loss(z, y, 0.25, 2.0), softmax_focal_loss(z, y, wf, 2.0))


def test_fl_star_matches_fvcore_and_formula():
    x, t = _inputs()
    ours, g_ours = _value_and_grad(sigmoid_focal_loss_star, x, t, 2.0, 0.0, "none")
    ref, g_ref = _value_and_grad(fvcore_fl_star, x, t, -1, 2.0, "none")
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
    # The paper's β = 1 against the formula in float64 autograd.
    ours, g_ours = _value_and_grad(sigmoid_focal_loss_star, x.double(), t.double(), 3.0, 1.0, "sum")
    xd = x.double().requires_grad_()
    ref = (-F.logsigmoid(3.0 * xd * (2 * t.double() - 1) + 1.0) / 3.0).sum()
    ref.backward()
    torch.testing.assert_close(ours, ref.detach())
    torch.testing.assert_close(g_ours, xd.grad)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 3, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = (torch.rand(6, 3, generator=g) < 0.5).double()
    assert torch.autograd.gradcheck(lambda v: sigmoid_focal_loss(v, t, 0.25, 2.0, "none"), (x,))
    assert torch.autograd.gradcheck(lambda v: sigmoid_focal_loss(v, t, 0.5, 0.5, "mean"), (x,))
    assert torch.autograd.gradcheck(lambda v: sigmoid_focal_loss_star(v, t, 2.0, 1.0, "sum"), (x,))
    y = torch.tensor([0, 2, 1, -1, 2, 0])
    assert torch.autograd.gradcheck(lambda v: softmax_focal_loss(v, y, 0.25, 2.0, "none"), (x,))
    assert torch.autograd.gradcheck(lambda v: softmax_focal_loss(v, y, None, 1.5, "mean"), (x,))


@pytest.mark.parametrize("p_t,factor", [(0.9, 100.0), (0.968, 1000.0)])
def test_paper_loss_reduction_vs_ce(p_t, factor):
    """The paper: with γ = 2, p_t = 0.9 has 100x lower loss than CE, p_t ≈ 0.968 about 1000x."""
    x = torch.tensor([math.log(p_t / (1 - p_t))])
    t = torch.ones(1)
    fl = sigmoid_focal_loss(x, t, -1, 2.0)
    ce = F.binary_cross_entropy_with_logits(x, t)
    assert float(ce / fl) == pytest.approx(factor, rel=0.03)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_give_a_float32_loss(dtype):
    """Half-precision logits (autocast): the loss is computed and returned in float32, as
    autocast's float32 ops return it; the gradient flows back in the logits' dtype."""
    x, t = _inputs()
    xl = x.to(dtype).requires_grad_()
    out = sigmoid_focal_loss(xl, t.to(dtype), 0.25, 2.0, "sum")
    out.backward()
    assert out.dtype == torch.float32 and xl.grad.dtype == dtype
    ref = torchvision.ops.sigmoid_focal_loss(x.to(dtype).float(), t, 0.25, 2.0, "sum")
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_empty_inputs():
    x = torch.zeros(0, 5, requires_grad=True)
    t = torch.zeros(0, 5)
    assert sigmoid_focal_loss(x, t, reduction="none").shape == (0, 5)
    for red in ("sum", "mean"):
        out = sigmoid_focal_loss(x, t, reduction=red)
        assert out.item() == 0.0
        out.backward()
    assert softmax_focal_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), reduction="sum") == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="differ"):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg")
    with pytest.raises(ValueError, match="alpha tensor"):
        softmax_focal_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(4))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 6),
    scale=st.sampled_from([1.0, 50.0, 1e4]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    gamma=st.sampled_from([0.0, 0.5, 2.0, 5.0]),
    seed=st.integers(0, 2**16),
)
def test_property_finite(n, k, scale, dtype, gamma, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, k, generator=g) * scale).clamp(-6e4, 6e4).to(dtype).requires_grad_()
    t = (torch.rand(n, k, generator=g) < 0.5).to(dtype)
    labels = torch.randint(-1, k, (n,), generator=g)
    # "mean": a sum of losses of 1e4 legitimately overflows float16's 65504.
    for out in (
        sigmoid_focal_loss(x, t, 0.25, gamma, "mean"),
        sigmoid_focal_loss_star(x, t, max(gamma, 0.5), 1.0, "mean"),
        softmax_focal_loss(x, labels, 0.25, gamma, "mean"),
    ):
        assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert torch.isfinite(out)
        (grad,) = torch.autograd.grad(out, x)
        assert torch.isfinite(grad).all()


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    """Where torch.compile cannot work (no C++ compiler), the eager kernels take over."""

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no working C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(losses, "_compiled", {})
    monkeypatch.setattr(losses, "_COMPILE_MIN_NUMEL", 0)
    losses.set_compile(True)
    x, t = _inputs()
    try:
        ours, g_ours = _value_and_grad(sigmoid_focal_loss, x, t, 0.25, 2.0, "sum")
        assert not losses._COMPILE and "using eager kernels" in caplog.text
    finally:
        losses.set_compile(True)
    ref, g_ref = _value_and_grad(torchvision.ops.sigmoid_focal_loss, x, t, 0.25, 2.0, "sum")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


# ---- exactness where the reference is exact (torchvision's and fvcore's own focal-loss checks) ----
def _extreme_inputs(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n, generator=g) * 8, torch.linspace(-110, 110, 2001),
                   torch.randn(n, generator=g) * 1e-3, torch.tensor([0.0, -0.0, 88.7, -88.7, 1e-30])])
    t = (torch.rand(x.numel(), generator=g) < 0.3).float()
    return x, t


@pytest.mark.parametrize("labels", [False, True], ids=["float-targets", "int-labels"])
@pytest.mark.parametrize("n", [7, 1000, 300_000])  # 300k: above the size where compiled kernels are used
def test_gamma0_without_alpha_is_bce_bit_for_bit(n, labels, compile_mode):
    x, t = _extreme_inputs(n, seed=n)
    for reduction in REDUCTIONS:
        if labels:  # (M, 1) logits against class index 0 (object) or 1 (background)
            ours, g_ours = _value_and_grad(sigmoid_focal_loss, x[:, None], (1 - t).long(), -1.0, 0.0, reduction)
            g_ours = g_ours[:, 0]
            ours = ours[:, 0] if reduction == "none" else ours
        else:
            ours, g_ours = _value_and_grad(sigmoid_focal_loss, x, t, -1.0, 0.0, reduction)
        ref, g_ref = _value_and_grad(F.binary_cross_entropy_with_logits, x, t, reduction=reduction)
        assert torch.equal(ours, ref), (reduction, (ours - ref).abs().max())
        assert torch.equal(g_ours, g_ref), (reduction, (g_ours - g_ref).abs().max())


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.7, 5.0])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_focal_loss_never_exceeds_bce(alpha, gamma, compile_mode):
    x, t = _extreme_inputs(150_000, seed=3)  # large enough for the compiled kernel
    fl = sigmoid_focal_loss(x, t, alpha, gamma, "none")
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert (fl <= bce).all(), (x[fl > bce][:5], (fl - bce).max())


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 6.0), st.integers(0, 2**31 - 1))
def test_focal_loss_never_exceeds_bce_property(alpha, gamma, seed):
    x, t = _extreme_inputs(500, seed)
    t = torch.where(torch.arange(t.numel()) % 3 == 0, torch.rand(t.numel(), generator=torch.Generator().manual_seed(seed)), t)
    fl = sigmoid_focal_loss(x, t, alpha, gamma, "none")
    assert (fl <= F.binary_cross_entropy_with_logits(x, t, reduction="none")).all()
