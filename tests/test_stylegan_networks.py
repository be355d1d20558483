"""StyleGAN2 networks: NVIDIA naming, shapes, truncation, and agreement with an independent formulation.

The reference forward below (``_reference_forward``) is written directly from the StyleGAN2 equations
in float64, one sample at a time: upsampling by explicit zero insertion + padding + the 2-D [1,3,3,1]
FIR filter + a true convolution (no transposed convolution, none of stylegan_ops' ops).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from stylegan_ops import Generator, MappingNetwork, SynthesisNetwork

Z, W = 16, 16


def small_G(res=32, c_dim=0, seed=0, randomize=True, **synthesis_kwargs):
    torch.manual_seed(seed)
    kw = dict(channel_base=256, channel_max=32)
    kw.update(synthesis_kwargs)
    G = Generator(z_dim=Z, c_dim=c_dim, w_dim=W, img_resolution=res, img_channels=3,
                  mapping_kwargs={"num_layers": 2}, synthesis_kwargs=kw).eval()
    if randomize:
        randomize_(G, seed)
    return G


def randomize_(G, seed):
    """Give every parameter and buffer a non-trivial value (init has zero noise strength and biases)."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, t in G.state_dict().items():
            if name.endswith("resample_filter"):
                continue
            r = torch.randn(t.shape, generator=g)
            if name.startswith("mapping.fc"):  # stored divided by lr_multiplier = 0.01
                r = r * (100.0 if name.endswith("weight") else 20.0)
            if name.endswith("noise_strength"):
                t.copy_(0.3 * r)
            elif name.endswith("affine.bias"):
                t.copy_(1 + 0.2 * r)
            elif name.startswith("mapping.fc"):
                t.copy_(r)
            elif name.endswith("bias") or name.endswith("w_avg"):
                t.copy_(0.2 * r)
            else:
                t.copy_(r)
    return G


# ------------------------------------------------------------------------------------------------
# NVIDIA names (written from stylegan2-ada-pytorch training/networks.py) for a 32 px generator with
# z_dim = w_dim = 16, c_dim = 5, 2 mapping layers, channel_base = 256, channel_max = 32
# (channels: 4 -> 32, 8 -> 32, 16 -> 16, 32 -> 8), in NVIDIA's state_dict order.
# ------------------------------------------------------------------------------------------------
def _layer(prefix, cout, cin, res, w_dim=16):
    return [
        (f"{prefix}.weight", (cout, cin, 3, 3)),
        (f"{prefix}.noise_strength", ()),
        (f"{prefix}.bias", (cout,)),
        (f"{prefix}.resample_filter", (4, 4)),
        (f"{prefix}.noise_const", (res, res)),
        (f"{prefix}.affine.weight", (cin, w_dim)),
        (f"{prefix}.affine.bias", (cin,)),
    ]


NVIDIA_NAMES_32PX = (
    [("synthesis.b4.const", (32, 4, 4)), ("synthesis.b4.resample_filter", (4, 4))]
    + _layer("synthesis.b4.conv1", 32, 32, 4)
    + [("synthesis.b4.torgb.weight", (3, 32, 1, 1)), ("synthesis.b4.torgb.bias", (3,)),
       ("synthesis.b4.torgb.affine.weight", (32, 16)), ("synthesis.b4.torgb.affine.bias", (32,))]
    + [("synthesis.b8.resample_filter", (4, 4))]
    + _layer("synthesis.b8.conv0", 32, 32, 8) + _layer("synthesis.b8.conv1", 32, 32, 8)
    + [("synthesis.b8.torgb.weight", (3, 32, 1, 1)), ("synthesis.b8.torgb.bias", (3,)),
       ("synthesis.b8.torgb.affine.weight", (32, 16)), ("synthesis.b8.torgb.affine.bias", (32,))]
    + [("synthesis.b16.resample_filter", (4, 4))]
    + _layer("synthesis.b16.conv0", 16, 32, 16) + _layer("synthesis.b16.conv1", 16, 16, 16)
    + [("synthesis.b16.torgb.weight", (3, 16, 1, 1)), ("synthesis.b16.torgb.bias", (3,)),
       ("synthesis.b16.torgb.affine.weight", (16, 16)), ("synthesis.b16.torgb.affine.bias", (16,))]
    + [("synthesis.b32.resample_filter", (4, 4))]
    + _layer("synthesis.b32.conv0", 8, 16, 32) + _layer("synthesis.b32.conv1", 8, 8, 32)
    + [("synthesis.b32.torgb.weight", (3, 8, 1, 1)), ("synthesis.b32.torgb.bias", (3,)),
       ("synthesis.b32.torgb.affine.weight", (8, 16)), ("synthesis.b32.torgb.affine.bias", (8,))]
    + [("mapping.w_avg", (16,)),
       ("mapping.embed.weight", (16, 5)), ("mapping.embed.bias", (16,)),
       ("mapping.fc0.weight", (16, 32)), ("mapping.fc0.bias", (16,)),
       ("mapping.fc1.weight", (16, 16)), ("mapping.fc1.bias", (16,))]
)


def test_names_and_shapes_match_nvidia():
    G = small_G(32, c_dim=5, randomize=False)
    got = [(k, tuple(v.shape)) for k, v in G.state_dict().items()]
    assert got == NVIDIA_NAMES_32PX
    params = {k for k, _ in G.named_parameters()}
    buffers = {k for k, _ in G.named_buffers()}
    assert buffers == {k for k, _ in NVIDIA_NAMES_32PX
                       if k.endswith(("resample_filter", "noise_const", "w_avg"))}
    assert "synthesis.b4.conv1.noise_strength" in params and "synthesis.b4.const" in params
    # A state dict with exactly these names loads strictly.
    G2 = small_G(32, c_dim=5, seed=1, randomize=False)
    G2.load_state_dict(G.state_dict(), strict=True)
    assert (G.num_ws, G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels) == (8, 16, 5, 16, 32, 3)


def test_config_f_layout():
    """Config-f at 1024 px: NVIDIA's channel counts and num_ws, checked on the meta device (no memory)."""
    with torch.device("meta"):
        syn = SynthesisNetwork(w_dim=512, img_resolution=1024, img_channels=3)
    assert syn.num_ws == 18
    chans = {r: getattr(syn, f"b{r}").conv1.weight.shape[0] for r in syn.block_resolutions}
    assert chans == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    n = sum(p.numel() for p in syn.parameters())
    assert 28_000_000 < n < 29_000_000  # config-f synthesis: ~28.3 M parameters


@pytest.mark.parametrize("res", [32, 256])
def test_shapes_and_ranges(res):
    G = small_G(res, conv_clamp=4.0, channel_base=res * 4, channel_max=32)
    outs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o))
             for name, m in G.named_modules() if type(m).__name__ in ("SynthesisLayer", "ToRGBLayer")]
    z = torch.randn(2, Z, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        img = G(z, None)
    for h in hooks:
        h.remove()
    assert img.shape == (2, 3, res, res) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    # (b) a sanity range, not a fit: demodulated layers keep unit-scale activations and the image sums
    # log2(res) - 1 toRGB outputs of std ~1, so std ~1-3 (0.75-2.8 over 8 weight seeds x 2 sizes);
    # 0.05 flags a blank output, 20 a missing demodulation (x ~sqrt(fan-in) = 17 per layer)
    assert 0.05 < img.std() < 20
    assert len(outs) == 3 * int(math.log2(res)) - 4
    for name, o in outs.items():  # conv_clamp bounds every layer output (clamp is exact: 1e-6 is only slack)
        assert o.abs().max() <= 4.0 + 1e-6, name
    assert max(o.abs().max() for o in outs.values()) == pytest.approx(4.0)  # and is actually hit
    ws = G.mapping(z, None)
    assert ws.shape == (2, G.num_ws, W)
    torch.testing.assert_close(G.synthesis(ws), img, rtol=0, atol=0)


def test_truncation():
    G = small_G(32)
    z = torch.randn(3, Z, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = G(z, None, truncation_psi=0)
        # (a) identical ws rows through one batch: equal up to per-row vectorization, a few ulp of |img| <~ 4
        torch.testing.assert_close(img[0], img[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(img[0], img[2], rtol=0, atol=1e-6)
        free = G(z, None)
        # different z give different images: mean |difference| ~1-3 (0.95-2.9 over 6 weight seeds), 100x above
        assert (free[0] - free[1]).abs().mean() > 1e-2
        ws = G.mapping(z, None)
        wt = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    # (a) the same lerp in float32, two roundings: within assert_close's float32 default (rtol 1.3e-6, atol 1e-5)
    torch.testing.assert_close(wt[:, :3], G.mapping.w_avg + 0.5 * (ws[:, :3] - G.mapping.w_avg))
    torch.testing.assert_close(wt[:, 3:], ws[:, 3:], rtol=0, atol=0)
    torch.testing.assert_close(ws[:, 0], ws[:, -1], rtol=0, atol=0)  # broadcast


def test_mapping_conditional_and_ema():
    G = small_G(32, c_dim=4)
    z = torch.randn(2, Z)
    c1, c2 = torch.eye(4)[[0, 0]], torch.eye(4)[[1, 1]]
    with pytest.raises(ValueError, match="conditional"):
        G.mapping(z, None)
    with pytest.raises(ValueError, match=r"c must have shape \[2, 4\]"):
        G.mapping(z, torch.zeros(2, 3))
    with torch.no_grad():  # the label changes w by O(1) (1.8-3.3 over 6 weight seeds), 1e-3 only rules out "ignored"
        assert (G.mapping(z, c1) - G.mapping(z, c2)).abs().max() > 1e-3
    m = MappingNetwork(z_dim=Z, c_dim=0, w_dim=W, num_ws=3, num_layers=2, w_avg_beta=0.9)
    with torch.no_grad():
        w = m(z)
        m(z, update_emas=True)
    assert w.shape == (2, 3, W)
    torch.testing.assert_close(m.w_avg, 0.1 * w[:, 0].mean(0))  # (a) one lerp from 0: float32 default tolerance
    bare = MappingNetwork(z_dim=Z, c_dim=0, w_dim=W, num_ws=None, num_layers=2)
    assert bare(z).shape == (2, W) and not hasattr(bare, "w_avg")
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        m(torch.zeros(2, 15))


def test_noise_modes_and_fused_variants():
    G = small_G(32)
    ws = G.mapping(torch.randn(2, Z), None).detach()
    with torch.no_grad():
        const = G.synthesis(ws, noise_mode="const")
        none = G.synthesis(ws, noise_mode="none")
        torch.manual_seed(5)
        r1 = G.synthesis(ws, noise_mode="random")
        torch.manual_seed(5)
        r2 = G.synthesis(ws, noise_mode="random")
        auto = G.synthesis(ws)  # CPU default: not fused, channels-last
        variants = {}
        for cl in (False, True):
            G.set_channels_last(cl)
            for fused in (False, True):
                variants[(cl, fused)] = G.synthesis(ws, fused_modconv=fused)
        G.set_channels_last(None)
    assert (const - none).abs().max() > 1e-3 and (const - r1).abs().max() > 1e-3
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    torch.testing.assert_close(auto, const, rtol=0, atol=0)
    torch.testing.assert_close(auto, variants[(True, False)], rtol=0, atol=0)
    assert not torch.equal(variants[(False, True)], variants[(True, False)])  # really different code paths
    for other in variants.values():
        # (a) fused / grouped and channels-last change the float32 summation order of <= 288-term sums
        # through 7 layers: ~1e-6 relative per layer; measured <= 3% of the tolerance over 6 weight seeds
        torch.testing.assert_close(other, auto, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="fixed")
    with pytest.raises(ValueError, match=r"\[N, 8, 16\]"):
        G.synthesis(ws[:, :7])


def test_bad_arguments():
    with pytest.raises(ValueError, match="power of two"):
        Generator(16, 0, 16, 48, 3)
    with pytest.raises(ValueError, match="skip"):
        Generator(16, 0, 16, 32, 3, synthesis_kwargs={"architecture": "resnet"})
    with pytest.raises(ValueError, match="unknown generator arguments"):
        Generator(16, 0, 16, 32, 3, synthesis_kwargs={"channel_bass": 5})
    with pytest.raises(ValueError, match="activation"):
        Generator(16, 0, 16, 32, 3, mapping_kwargs={"activation": "gelu"})


def test_gradients_flow():
    G = small_G(32).train()
    G.requires_grad_(True)
    z = torch.randn(2, Z)
    img = G(z, None, noise_mode="random")
    img.square().mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert G.synthesis.b32.conv0.weight.grad.abs().sum() > 0
    assert G.mapping.fc0.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# Independent reference (float64, per sample, zero insertion + FIR + true convolution)
# ------------------------------------------------------------------------------------------------
_FIR = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
_FIR2 = torch.outer(_FIR, _FIR) / 64.0


def _zero_insert_fir(x, pad0, pad1, gain=4.0):
    """x [1, C, H, W] -> zero insertion (x at even positions), zero padding, 2-D FIR * gain."""
    _, C, H, Wd = x.shape
    up = x.new_zeros(1, C, 2 * H, 2 * Wd)
    up[:, :, ::2, ::2] = x
    up = F.pad(up, [pad0, pad1, pad0, pad1])
    k = (_FIR2 * gain).flip([0, 1])[None, None].repeat(C, 1, 1, 1)
    return F.conv2d(up, k, groups=C)


def _reference_forward(G, z, psi=1.0):
    sd = {k: v.double() for k, v in G.state_dict().items()}
    lrelu = lambda t: F.leaky_relu(t, 0.2) * math.sqrt(2)  # noqa: E731
    x = z.double()
    x = x / torch.sqrt((x ** 2).mean(1, keepdim=True) + 1e-8)
    for i in range(G.mapping.num_layers):
        Wt, b = sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"]
        x = lrelu(x @ (Wt * (0.01 / math.sqrt(Wt.shape[1]))).T + b * 0.01)
    w = sd["mapping.w_avg"] + psi * (x - sd["mapping.w_avg"])

    def styles(prefix, wv):
        A = sd[f"{prefix}.affine.weight"]
        return wv @ (A / math.sqrt(A.shape[1])).T + sd[f"{prefix}.affine.bias"]

    def layer(prefix, xn, wv, up):
        Wt = sd[f"{prefix}.weight"] * styles(prefix, wv)[None, :, None, None]
        Wt = Wt / torch.sqrt((Wt ** 2).sum([1, 2, 3], keepdim=True) + 1e-8)
        if up:  # upsample2d-then-convolve: pad 3/2 around the zero-inserted image, FIR, valid conv
            y = F.conv2d(_zero_insert_fir(xn, 3, 2), Wt.flip([2, 3]))
        else:
            y = F.conv2d(xn, Wt, padding=1)
        y = y + sd[f"{prefix}.noise_const"] * sd[f"{prefix}.noise_strength"]
        return lrelu(y + sd[f"{prefix}.bias"][None, :, None, None])

    def torgb(prefix, xn, wv):
        Wt = sd[f"{prefix}.weight"]
        s = styles(prefix, wv) / math.sqrt(Wt.shape[1])
        return F.conv2d(xn, Wt * s[None, :, None, None]) + sd[f"{prefix}.bias"][None, :, None, None]

    imgs = []
    for n in range(z.shape[0]):
        wn = w[n]
        xn = sd["synthesis.b4.const"][None]
        xn = layer("synthesis.b4.conv1", xn, wn, up=False)
        img = torgb("synthesis.b4.torgb", xn, wn)
        for r in G.synthesis.block_resolutions[1:]:
            b = f"synthesis.b{r}"
            xn = layer(f"{b}.conv0", xn, wn, up=True)
            xn = layer(f"{b}.conv1", xn, wn, up=False)
            img = _zero_insert_fir(img, 2, 1) + torgb(f"{b}.torgb", xn, wn)
        imgs.append(img)
    return torch.cat(imgs)


@pytest.mark.parametrize("fused", [True, False])
def test_matches_independent_reference(fused):
    G = small_G(32)
    z = torch.randn(3, Z, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = G(z, None, truncation_psi=0.8, fused_modconv=fused)
    ref = _reference_forward(G, z, psi=0.8)
    assert ref.abs().max() > 0.5
    # (a) float32 network against float64: <= 288-term sums per layer, ~sqrt(288) 2^-24 ~ 1e-6 relative per
    # layer over ~10 layers -> ~1e-5 of max|ref|; measured <= 0.7% of the tolerance over 6 weight seeds
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
