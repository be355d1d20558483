"""Reuse of weight-derived tensors at inference (stylegan_ops.ops._derived): the outputs are bitwise those
of recomputing every call, reused tensors follow every change of their sources, training is unaffected,
and a forward pass dispatches fewer operators (on a GPU: fewer kernel launches per layer).
"""

import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from stylegan_ops import networks
from stylegan_ops.ops import _build, _derived
from stylegan_ops.ops import upfirdn2d as U

from test_stylegan_networks import Z, randomize_, small_G


@pytest.fixture
def reuse():
    """Run with reuse on (the default) and a clean store; restore the switch afterwards."""
    saved = _derived.enabled
    _derived.enabled = True
    _derived.clear()
    yield
    _derived.enabled = saved
    _derived.clear()


def _run(G, z, enabled, **kw):
    saved = _derived.enabled
    _derived.enabled = enabled
    try:
        with torch.no_grad():
            return G(z, None, noise_mode="const", **kw)
    finally:
        _derived.enabled = saved


def _count_ops(fn):
    """Number of outermost aten operators `fn` dispatches (what its Python code calls)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events()
               if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


@pytest.mark.parametrize("fused", [True, False])
def test_bitwise_equal_and_fewer_ops(reuse, fused):
    G = small_G(res=16)
    z = torch.randn(3, Z, generator=torch.Generator().manual_seed(1))
    fresh = _run(G, z, False, fused_modconv=fused)
    first = _run(G, z, True, fused_modconv=fused)   # fills the store
    again = _run(G, z, True, fused_modconv=fused)   # reuses it
    assert torch.equal(fresh, first) and torch.equal(fresh, again)
    n_fresh = _count_ops(lambda: _run(G, z, False, fused_modconv=fused))
    n_reuse = _count_ops(lambda: _run(G, z, True, fused_modconv=fused))
    # Per synthesis layer at least the fc weight scaling (1 op), the demodulation matrix of the conv
    # layers (square + sum: 2 ops) and the scaled noise (1 op) are gone; 16 px has 5 conv layers,
    # 3 torgb and 2 + 8 fully connected layers, so at least 5 * 3 + 10 fewer operators.
    assert n_reuse <= n_fresh - (5 * 3 + 10), (n_fresh, n_reuse)


def test_reuse_follows_changes(reuse):
    G = small_G(res=16)
    z = torch.randn(2, Z, generator=torch.Generator().manual_seed(2))
    y0 = _run(G, z, True)
    with torch.no_grad():  # in-place edits of a conv weight, a noise strength, a mapping weight and a bias
        G.synthesis.b8.conv1.weight.mul_(1.5)
        G.synthesis.b16.conv0.noise_strength.add_(0.3)
        G.mapping.fc1.weight.mul_(0.9)
        G.synthesis.b16.torgb.bias.add_(0.1)
    y1 = _run(G, z, True)
    assert not torch.equal(y0, y1)
    assert torch.equal(y1, _run(G, z, False))
    # load_state_dict (copy_ into the same tensors) and a deep copy (new tensors)
    other = small_G(res=16, seed=5)
    G.load_state_dict(other.state_dict())
    assert torch.equal(_run(G, z, True), _run(other, z, False))
    G2 = copy.deepcopy(G)
    with torch.no_grad():
        G2.synthesis.b4.conv1.weight.neg_()
    assert torch.equal(_run(G2, z, True), _run(G2, z, False))
    assert torch.equal(_run(G, z, True), _run(other, z, False))


def test_training_and_inference_mode_unaffected(reuse):
    G = small_G(res=8).train()
    G.requires_grad_(True)
    z = torch.randn(2, Z, generator=torch.Generator().manual_seed(3))
    _run(G, z, True)  # an inference call first: nothing it stores may leak into training
    grads = []
    for enabled in (True, False):
        _derived.enabled = enabled
        G.zero_grad()
        for _ in range(2):  # two steps: a reused graph would fail ("backward through the graph a second time")
            G(z, None, noise_mode="const").square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in G.named_parameters() if p.grad is not None})
        _derived.enabled = True
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(G.parameters()))
    for n in grads[0]:
        assert torch.equal(grads[0][n], grads[1][n]), n
    with torch.inference_mode():  # inference tensors have no version counter: computed, not stored
        G.eval()
        y = G(z, None, noise_mode="const")
    assert torch.equal(y, _run(G, z, False))


def test_float16_modulated_conv_reuse(reuse):
    """The float16 branch (pre-normalized weight, float16 weight copy) reuses bitwise and follows changes."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 6, 6, generator=g).half()
    weight = torch.randn(5, 8, 3, 3, generator=g)
    styles = torch.randn(2, 8, generator=g)
    f = U.setup_filter([1, 3, 3, 1])
    for fused in (True, False):
        for up in (1, 2):
            def call(enabled):
                _derived.enabled = enabled
                try:
                    return networks.modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=f,
                                                     fused_modconv=fused)
                finally:
                    _derived.enabled = True
            ref = call(False)
            assert ref.dtype == torch.float16
            assert torch.equal(call(True), ref) and torch.equal(call(True), ref)
            weight.mul_(-0.5)
            assert torch.equal(call(True), call(False))


class _FakePlugin:
    """Stands for the compiled upfirdn2d kernel on CPU: correlates with the 2-D taps it is given."""

    def __init__(self):
        self.calls = 0

    def upfirdn2d_cuda(self, x, g, upx, upy, downx, downy, px0, px1, py0, py1):
        self.calls += 1
        return U._upfirdn2d_ref(x, g, upx, upy, downx, downy, px0, px1, py0, py1, True, 1)


def test_upfirdn2d_kernel_path_reuses_taps(reuse, monkeypatch):
    """The kernel path prepares the correlation taps once per filter, not on every call."""
    plugin = _FakePlugin()
    monkeypatch.setattr(_build, "use_cuda", lambda name, x, impl, reference_only_reason=None: impl != "ref")
    monkeypatch.setattr(_build, "get_plugin", lambda name: plugin)
    prepared = []
    orig = U._correlation_filter_of
    monkeypatch.setattr(U, "_correlation_filter_of", lambda *a: prepared.append(a) or orig(*a))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    f = U.setup_filter([1, 3, 3, 1])
    ys = [U.upsample2d(x, f) for _ in range(3)]
    assert plugin.calls == 3 and len(prepared) == 1
    ref = U.upsample2d(x, f, impl="ref")
    for y in ys:
        torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        f.mul_(2.0)  # changed in place: prepared again
    torch.testing.assert_close(U.upsample2d(x, f), U.upsample2d(x, f, impl="ref"), rtol=1e-6, atol=1e-6)
    assert len(prepared) == 2
    U.upsample2d(x, f, gain=3)  # other arguments: other taps
    assert len(prepared) == 3


def test_reuse_follows_storage_replacement(reuse):
    """module.half().float() replaces the parameters' storages (rounded values): recomputed, not reused."""
    fc = networks.FullyConnectedLayer(16, 8, activation="lrelu", lr_multiplier=0.01)
    with torch.no_grad():
        fc.weight.add_(torch.rand(fc.weight.shape) * 1e-3)  # values that float16 rounds
        fc.bias.add_(0.123456789)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y0 = fc(x)
        fc.half().float()
        y1 = fc(x)
        _derived.enabled = False
        fresh = fc(x)
        _derived.enabled = True
    assert torch.equal(y1, fresh) and not torch.equal(y0, y1)


def test_meta_tensors_are_not_stored(reuse):
    """Meta tensors have no storage (every data_ptr is 0): computed, never stored."""
    w = torch.empty(4, 3, device="meta")
    assert _derived.derived((w,), "t", lambda: w * 2).device.type == "meta"
    assert not _derived._STORE
    v = torch.ones(2)
    _derived.derived((v,), "t", lambda: v * 2)
    assert len(_derived._STORE) == 1
