"""Checkpoint loading: our format, NVIDIA persistence pickles, rosinality .pt, refusals and errors.

The NVIDIA pickles are built here with the record structure of ``torch_utils.persistence`` (version 6):
objects whose ``__reduce__`` returns ``(torch_utils.persistence._reconstruct_persistent_obj, (meta,))``
with ``meta = {type, version, module_src, class_name, state}`` and the state a module ``__dict__``.
The fake ``torch_utils`` / ``dnnlib`` modules exist only while pickling; the stored ``module_src``
is code that would create a marker file if anyone executed it.
"""

import argparse
import builtins
import collections
import copy
import math
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import stylegan_ops
from latent_balance import StyleGAN2Adapter
from latent_balance import load_generator as lb_load_generator
from stylegan_ops import CheckpointError, Generator, UnsafeCheckpointError, load_generator, save_generator
from test_stylegan_networks import W, Z, _zero_insert_fir, small_G


def _images(G, seed=0, n=3, **kw):
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G(z, None, **kw)


def _assert_same_generator(G1, G2, same_kwargs=True):
    if same_kwargs:
        assert G1.init_kwargs == G2.init_kwargs
    for (k1, v1), (k2, v2) in zip(G1.state_dict().items(), G2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    assert torch.equal(_images(G1), _images(G2))
    assert torch.equal(_images(G1, truncation_psi=0.6), _images(G2, truncation_psi=0.6))


# ------------------------------------------------------------------------------------------------
# (c) our format
# ------------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    G = small_G(32, c_dim=0, conv_clamp=256)
    path = tmp_path / "g.pt"
    save_generator(G, path, metadata={"kimg": 12})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == stylegan_ops.FORMAT_NAME and raw["metadata"] == {"kimg": 12}
    G2 = load_generator(path)
    assert isinstance(G2, Generator) and not G2.training
    assert not any(p.requires_grad for p in G2.parameters())
    _assert_same_generator(G, G2)
    assert not [p for p in tmp_path.iterdir() if p.name != "g.pt"]  # atomic write left no temp file


def test_save_rejects_other_objects(tmp_path):
    with pytest.raises(TypeError, match="stylegan_ops.Generator"):
        save_generator(torch.nn.Linear(2, 2), tmp_path / "x.pt")


# ------------------------------------------------------------------------------------------------
# (a) NVIDIA persistence pickles
# ------------------------------------------------------------------------------------------------
def _never_called(meta):  # stands for NVIDIA's function; the loader must never call it
    raise AssertionError("NVIDIA's _reconstruct_persistent_obj was called")


_never_called.__module__ = "torch_utils.persistence"
_never_called.__name__ = _never_called.__qualname__ = "_reconstruct_persistent_obj"


class EasyDict(dict):  # pickled as dnnlib.util.EasyDict, like NVIDIA's
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


EasyDict.__module__ = "dnnlib.util"


class _Persistent:
    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (_never_called, (self.meta,))


@pytest.fixture
def nvidia_modules(monkeypatch):
    """The module paths NVIDIA's pickles reference, present only so that pickle.dump can name them."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _never_called
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = util
    for name, mod in [("torch_utils", torch_utils), ("torch_utils.persistence", persistence), ("dnnlib", dnnlib),
                      ("dnnlib.util", util)]:
        monkeypatch.setitem(sys.modules, name, mod)


def _src(marker, extra=""):
    return f"import os\nos.system('touch {marker}')\n{extra}\nclass Generator:\n    pass\n"


_ATTRS = ("z_dim", "c_dim", "w_dim", "num_ws", "num_layers", "resolution", "up", "use_noise", "activation",
          "conv_clamp", "padding", "in_channels", "img_channels", "is_last", "architecture", "use_fp16",
          "channels_last", "num_conv", "num_torgb", "img_resolution", "block_resolutions")


def _record(module, src, init_args=(), init_kwargs=None, class_name=None):
    """The persistence record NVIDIA's pickler writes for `module` (and, recursively, its children)."""
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (n, None if p is None else torch.nn.Parameter(p.detach().clone())) for n, p in module._parameters.items()),
        "_buffers": collections.OrderedDict((n, b.clone()) for n, b in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict((n, _record(c, src)) for n, c in module._modules.items()),
        "_init_args": tuple(init_args),
        "_init_kwargs": init_kwargs or {},
    }
    for attr in ("weight_gain", "bias_gain", "act_gain"):
        if hasattr(module, attr):
            state[attr] = np.float64(getattr(module, attr))  # numpy scalars, as NVIDIA's np.sqrt gives
    for attr in _ATTRS:
        if hasattr(module, attr):
            state[attr] = getattr(module, attr)
    return _Persistent(dict(type="class", version=6, module_src=src, class_name=class_name or type(module).__name__,
                            state=state))


def _ada_kwargs(G):
    kw = G.init_kwargs
    return dict(z_dim=kw["z_dim"], w_dim=kw["w_dim"], mapping_kwargs=EasyDict(kw["mapping_kwargs"]),
                synthesis_kwargs=EasyDict(kw["synthesis_kwargs"]), c_dim=kw["c_dim"],
                img_resolution=kw["img_resolution"], img_channels=kw["img_channels"])


def _snapshot(G_ema, src, G=None, kwargs=None):
    G = G if G is not None else G_ema
    kwargs = kwargs if kwargs is not None else _ada_kwargs(G_ema)
    d_state = {"_parameters": collections.OrderedDict(w=torch.nn.Parameter(torch.randn(4, 4))), "_buffers": {},
               "_modules": {}, "mbstd_group_size": 4, "_init_kwargs": {"c_dim": 0, "img_resolution": 32}}
    return dict(
        G=_record(G, src, init_kwargs=_ada_kwargs(G)),
        D=_Persistent(dict(type="class", version=6, module_src=src, class_name="Discriminator", state=d_state)),
        G_ema=_record(G_ema, src, init_kwargs=kwargs),
        augment_pipe=None,
        training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="/data/ffhq.zip",
                                 use_labels=False, max_size=70000, xflip=True, resolution=32),
    )


def _dump(obj, path, protocol=4, cuda_tags=False):
    with pytest.MonkeyPatch.context() as mp:
        if cuda_tags:  # storages tagged as saved from a GPU, as in NVIDIA's released pickles
            mp.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=protocol)


@pytest.mark.parametrize("protocol,cuda_tags", [(2, False), (3, False), (4, True), (5, False)])
def test_nvidia_pickle_loads_and_reproduces(tmp_path, nvidia_modules, protocol, cuda_tags):
    marker = tmp_path / "executed"
    G_ema = small_G(32, c_dim=0, conv_clamp=256)
    G_train = small_G(32, c_dim=0, conv_clamp=256, seed=9)  # 'G' differs: the loader must prefer G_ema
    path = tmp_path / "network-snapshot-000100.pkl"
    _dump(_snapshot(G_ema, _src(marker), G=G_train), path, protocol, cuda_tags)
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        sys.modules.pop(name, None)  # loading needs none of NVIDIA's modules
    if cuda_tags:
        assert b"cuda:0" in path.read_bytes()
    G = load_generator(path)
    assert not marker.exists()  # the embedded module source never ran
    assert isinstance(G, Generator) and not G.training
    _assert_same_generator(G_ema, G)


def test_nvidia_pickle_conditional_positional_and_bare_record(tmp_path, nvidia_modules):
    G0 = small_G(32, c_dim=3)
    kw = G0.init_kwargs
    args = (kw["z_dim"], kw["c_dim"], kw["w_dim"], kw["img_resolution"], kw["img_channels"])
    rec = _record(G0, _src(tmp_path / "m"), init_args=args,
                  init_kwargs=dict(mapping_kwargs=EasyDict(kw["mapping_kwargs"]),
                                   synthesis_kwargs=EasyDict(kw["synthesis_kwargs"])))
    path = tmp_path / "g.pkl"
    _dump(rec, path)  # a bare G_ema pickled on its own
    G = load_generator(path)
    c = torch.eye(3)[[0, 1, 2]]
    z = torch.randn(3, Z)
    with torch.no_grad():
        torch.testing.assert_close(G(z, c), G0(z, c), rtol=0, atol=0)


def test_stylegan3_stylegan2_config_defaults(tmp_path, nvidia_modules):
    """stylegan3's networks_stylegan2: flat synthesis kwargs; conv_clamp=256, num_fp16_res=4 by default."""
    G0 = small_G(32, conv_clamp=256, num_fp16_res=4, fused_modconv_default="inference_only")
    kw = G0.init_kwargs
    flat = dict(z_dim=kw["z_dim"], w_dim=kw["w_dim"], mapping_kwargs=EasyDict(num_layers=2),
                channel_base=kw["synthesis_kwargs"]["channel_base"], channel_max=kw["synthesis_kwargs"]["channel_max"],
                fused_modconv_default="inference_only", c_dim=0, img_resolution=32, img_channels=3)
    src = _src(tmp_path / "m", "# networks_stylegan2.py\nfused_modconv_default = True")
    path = tmp_path / "sg3.pkl"
    _dump(_snapshot(G0, src, kwargs=flat), path)
    G = load_generator(path)
    assert G.synthesis.b32.conv1.conv_clamp == 256 and G.synthesis.num_fp16_res == 4
    assert G.synthesis.b32.use_fp16 and not G.synthesis.b4.use_fp16
    assert torch.equal(_images(G), _images(G0))


def test_nvidia_pickle_refusals(tmp_path, nvidia_modules):
    G0 = small_G(32)
    stylegan3 = tmp_path / "sg3t.pkl"
    _dump(_snapshot(G0, _src(tmp_path / "m", "class SynthesisInput:\n    pass")), stylegan3)
    with pytest.raises(CheckpointError, match="StyleGAN3"):
        load_generator(stylegan3)

    snap = _snapshot(G0, _src(tmp_path / "m"))
    snap["G_ema"].meta["state"]["_modules"]["synthesis"].meta["state"]["_modules"]["b8"].meta["class_name"] = \
        "Conv2dLayer"
    resnet = tmp_path / "resnet.pkl"
    _dump(snap, resnet)
    with pytest.raises(CheckpointError, match="Conv2dLayer"):
        load_generator(resnet)

    snap = _snapshot(G0, _src(tmp_path / "m"))
    del snap["G_ema"].meta["state"]["_modules"]["mapping"].meta["state"]["_modules"]["fc1"].meta["state"][
        "_parameters"]["bias"]
    incomplete = tmp_path / "incomplete.pkl"
    _dump(snap, incomplete)
    with pytest.raises(CheckpointError, match=r"missing 1 keys \['mapping.fc1.bias'\]"):
        load_generator(incomplete)

    snap = _snapshot(G0, _src(tmp_path / "m"))
    snap["G_ema"].meta["state"]["_init_kwargs"]["img_resolution"] = 2 ** 20
    huge = tmp_path / "huge.pkl"
    _dump(snap, huge)
    with pytest.raises(CheckpointError, match="img_resolution"):
        load_generator(huge)

    snap = _snapshot(G0, _src(tmp_path / "m"))
    snap["G_ema"].meta["state"]["_init_kwargs"]["synthesis_kwargs"]["channel_base"] *= 2
    mismatch = tmp_path / "mismatch.pkl"
    _dump(snap, mismatch)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_generator(mismatch)

    no_g = tmp_path / "d_only.pkl"
    snap = _snapshot(G0, _src(tmp_path / "m"))
    del snap["G"], snap["G_ema"]
    _dump(snap, no_g)
    with pytest.raises(CheckpointError, match=r"'G_ema' \(or 'G'\).*found keys \['D', 'augment_pipe'"):
        load_generator(no_g)
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------------
# Malicious pickles: refused, nothing runs
# ------------------------------------------------------------------------------------------------
class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _payloads(marker):
    cmd = f"touch {marker}"
    return {
        "os.system": _Reduce(os.system, (cmd,)),
        "builtins.eval": _Reduce(builtins.eval, (f"__import__('os').system({cmd!r})",)),
        "builtins.exec": _Reduce(builtins.exec, (f"import os; os.system({cmd!r})",)),
        "subprocess.Popen": _Reduce(subprocess.Popen, (["touch", str(marker)],)),
        "builtins.__import__": _Reduce(builtins.__import__, ("os",)),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen",
                                  "builtins.__import__"])
def test_malicious_pickle_is_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _payloads(marker)[name]}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_generator(path)
    assert not marker.exists()


def test_malicious_payload_hidden_in_a_record_or_a_storage(tmp_path, nvidia_modules):
    marker = tmp_path / "pwned"
    G0 = small_G(32)
    snap = _snapshot(G0, _src(marker))
    snap["G_ema"].meta["state"]["_modules"]["synthesis"].meta["state"]["weight_gain"] = \
        _Reduce(os.system, (f"touch {marker}",))
    nested = tmp_path / "nested.pkl"
    _dump(snap, nested)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_generator(nested)

    # A "storage" whose bytes are a pickle that calls os.system: torch's own _load_from_bytes would run
    # it (weights_only=False); ours loads it with weights_only=True.
    evil_bytes = pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), protocol=2)
    snap = _snapshot(G0, _src(marker))
    fake_tensor = _Reduce(torch._utils._rebuild_tensor_v2,
                          (_Reduce(torch.storage._load_from_bytes, (evil_bytes,)), 0, (1,), (1,), False,
                           collections.OrderedDict()))
    snap["G_ema"].meta["state"]["_modules"]["mapping"].meta["state"]["_buffers"]["w_avg"] = fake_tensor
    storage = tmp_path / "storage.pkl"
    _dump(snap, storage)
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        load_generator(storage)

    # The same inside a torch zip file (a rosinality-style .pt).
    pt = tmp_path / "evil.pt"
    torch.save({"g_ema": {"style.1.weight": _Reduce(os.system, (f"touch {marker}",))}}, pt)
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        load_generator(pt)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Truncated and foreign files
# ------------------------------------------------------------------------------------------------
def test_truncated_and_foreign_files(tmp_path, nvidia_modules):
    G0 = small_G(32)
    pkl = tmp_path / "full.pkl"
    _dump(_snapshot(G0, _src(tmp_path / "m")), pkl)
    data = pkl.read_bytes()
    for frac in (0.3, 0.7, 0.999):
        cut = tmp_path / f"cut{frac}.pkl"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(CheckpointError, match="truncated"):
            load_generator(cut)

    ours = tmp_path / "ours.pt"
    save_generator(G0, ours)
    cut = tmp_path / "ours_cut.pt"
    cut.write_bytes(ours.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_generator(cut)

    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_generator(empty)

    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"weights": [1.0, 2.0], "epoch": 3}))
    with pytest.raises(CheckpointError, match=r"expected an NVIDIA snapshot dict with 'G_ema'"):
        load_generator(foreign)

    other_torch = tmp_path / "resnet.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, other_torch)
    with pytest.raises(CheckpointError, match="unknown torch checkpoint.*'model'"):
        load_generator(other_torch)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_generator(text)

    raw = torch.load(ours, weights_only=True)
    del raw["state_dict"]["synthesis.b16.torgb.bias"]
    missing = tmp_path / "missing.pt"
    torch.save(raw, missing)
    with pytest.raises(CheckpointError, match=r"missing 1 keys \['synthesis.b16.torgb.bias'\]"):
        load_generator(missing)

    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "nope.pkl")


# ------------------------------------------------------------------------------------------------
# (b) rosinality
# ------------------------------------------------------------------------------------------------
def to_rosinality(G):
    """Our generator as a rosinality stylegan2-pytorch ``Generator`` state dict (the inverse conversion)."""
    sd = G.state_dict()
    out = {}
    for i in range(G.mapping.num_layers):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"].clone()
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"].clone()
    kernel = sd["synthesis.b4.resample_filter"] * 4

    def conv(dst, src, noise, blur=False):
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None].clone()
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"].clone()
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"].clone()
        if blur:
            out[f"{dst}.conv.blur.kernel"] = kernel.clone()
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1).clone()
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"].clone()
        out[noise] = sd[f"{src}.noise_const"][None, None].clone()

    def rgb(dst, src, up):
        if up:
            out[f"{dst}.upsample.kernel"] = kernel.clone()
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None].clone()
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"].clone()
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"].clone()
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1).clone()

    out["input.input"] = sd["synthesis.b4.const"][None].clone()
    conv("conv1", "synthesis.b4.conv1", "noises.noise_0")
    rgb("to_rgb1", "synthesis.b4.torgb", up=False)
    for j, r in enumerate(G.synthesis.block_resolutions[1:]):
        conv(f"convs.{2 * j}", f"synthesis.b{r}.conv0", f"noises.noise_{2 * j + 1}", blur=True)
        conv(f"convs.{2 * j + 1}", f"synthesis.b{r}.conv1", f"noises.noise_{2 * j + 2}")
        rgb(f"to_rgbs.{j}", f"synthesis.b{r}.torgb", up=True)
    return out


def _rosinality_reference(sd, latent_avg, z, psi=1.0):
    """rosinality's Generator.forward(input_is_latent=False, randomize_noise=False, truncation=psi),
    following its conventions (weights scaled by 1/sqrt(fan_in) before modulation, 2-D blur kernels
    from the file, latent/noise indexing), in float64 with zero-insertion upsampling."""
    sd = {k: v.double() for k, v in sd.items()}
    lrelu = lambda t: F.leaky_relu(t, 0.2) * math.sqrt(2)  # noqa: E731
    x = z.double()
    x = x * torch.rsqrt((x ** 2).mean(1, keepdim=True) + 1e-8)
    i = 1
    while f"style.{i}.weight" in sd:
        Wt = sd[f"style.{i}.weight"]
        x = lrelu(x @ (Wt * (1 / math.sqrt(Wt.shape[1])) * 0.01).T + sd[f"style.{i}.bias"] * 0.01)
        i += 1
    w = latent_avg.double() + psi * (x - latent_avg.double())

    def modconv(prefix, xn, wv, demod=True, up=False):
        Wt = sd[f"{prefix}.conv.weight"][0]
        fan_in = Wt.shape[1] * Wt.shape[2] * Wt.shape[3]
        A = sd[f"{prefix}.conv.modulation.weight"]
        s = wv @ (A / math.sqrt(A.shape[1])).T + sd[f"{prefix}.conv.modulation.bias"]
        Wm = Wt / math.sqrt(fan_in) * s[None, :, None, None]
        if demod:
            Wm = Wm * torch.rsqrt((Wm ** 2).sum([1, 2, 3], keepdim=True) + 1e-8)
        if up:  # transposed stride-2 conv then blur(pad 1, 1) == zero insertion, pad (3, 2), blur, valid conv
            assert torch.allclose(sd[f"{prefix}.conv.blur.kernel"], _FIR4)
            return F.conv2d(_zero_insert_fir(xn, 3, 2), Wm.flip([2, 3]))
        return F.conv2d(xn, Wm, padding=Wt.shape[-1] // 2)

    def styled(prefix, xn, wv, noise, up=False):
        y = modconv(f"{prefix}", xn, wv, up=up) + sd[f"{prefix}.noise.weight"] * sd[noise]
        return lrelu(y + sd[f"{prefix}.activate.bias"][None, :, None, None])

    imgs = []
    for n in range(z.shape[0]):
        wn = w[n]
        out = styled("conv1", sd["input.input"], wn, "noises.noise_0")
        skip = modconv("to_rgb1", out, wn, demod=False) + sd["to_rgb1.bias"]
        j = 0
        while f"to_rgbs.{j}.conv.weight" in sd:
            out = styled(f"convs.{2 * j}", out, wn, f"noises.noise_{2 * j + 1}", up=True)
            out = styled(f"convs.{2 * j + 1}", out, wn, f"noises.noise_{2 * j + 2}")
            assert torch.allclose(sd[f"to_rgbs.{j}.upsample.kernel"], _FIR4)
            skip = modconv(f"to_rgbs.{j}", out, wn, demod=False) + sd[f"to_rgbs.{j}.bias"] + \
                _zero_insert_fir(skip, 2, 1)
            j += 1
        imgs.append(skip)
    return torch.cat(imgs)


_FIR4 = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])).double() / 16


def test_rosinality_pt_loads_and_reproduces(tmp_path):
    G0 = small_G(32)
    ros = to_rosinality(G0)
    path = tmp_path / "550000.pt"
    torch.save({"g_ema": ros, "latent_avg": G0.mapping.w_avg.clone()}, path)
    G = load_generator(path)
    _assert_same_generator(G0, G, same_kwargs=False)  # the stored values round-trip exactly
    # ... and the converted generator computes what rosinality's network computes with those values.
    z = torch.randn(3, Z, generator=torch.Generator().manual_seed(4))
    ref = _rosinality_reference(ros, G0.mapping.w_avg, z, psi=0.7)
    with torch.no_grad():
        ours = G(z, None, truncation_psi=0.7)
    # (a) float32 network against a float64 reference: as in test_stylegan_networks, ~1e-5 of max|ref|
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_rosinality_256px_channel_layout(tmp_path):
    G0 = small_G(256, channel_base=1024, channel_max=32)
    path = tmp_path / "g256.pt"
    torch.save({"g_ema": to_rosinality(G0), "latent_avg": G0.mapping.w_avg.clone()}, path)
    G = load_generator(path)
    assert G.init_kwargs["synthesis_kwargs"] == {"channel_base": 1024, "channel_max": 32}
    assert G.init_kwargs["mapping_kwargs"] == {"num_layers": 2, "lr_multiplier": 0.01}
    assert torch.equal(_images(G, n=1), _images(G0, n=1))


@pytest.mark.filterwarnings("ignore:the rosinality checkpoint has no 'latent_avg'")
def test_rosinality_training_checkpoint_without_latent_avg(tmp_path):
    G0 = small_G(32)
    ros = to_rosinality(G0)
    adam = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.002, betas=(0.0, 0.99))
    path = tmp_path / "010000.pt"
    torch.save({"g": to_rosinality(small_G(32, seed=4)), "d": {"convs.0.0.weight": torch.zeros(2, 3, 1, 1)},
                "g_ema": ros, "g_optim": adam.state_dict(), "d_optim": adam.state_dict(),
                "args": argparse.Namespace(size=32, latent=W, n_mlp=2, channel_multiplier=2), "ada_aug_p": 0.1},
               path)
    G = load_generator(path)
    assert torch.equal(_images(G), _images(G0))  # g_ema, not g
    z = torch.randn([10_000, W], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # (a) the loader's own estimate (same 10,000 z, seed 0): float32 default tolerance
        torch.testing.assert_close(G.mapping.w_avg, G.mapping(z, None)[:, 0].mean(0))


def test_rosinality_errors(tmp_path):
    ros = to_rosinality(small_G(32))
    bad = dict(ros)
    del bad["input.input"]
    path = tmp_path / "bad.pt"
    torch.save({"g_ema": bad}, path)
    with pytest.raises(CheckpointError, match="lacks 'input.input'"):
        load_generator(path)
    extra = dict(ros, **{"convs.0.conv.extra": torch.zeros(1)})
    torch.save({"g_ema": extra}, path)
    with pytest.raises(CheckpointError, match="convs.0.conv.extra"):
        load_generator(path)
    blur = dict(ros)
    blur["convs.0.conv.blur.kernel"] = torch.ones(4, 4) / 4
    torch.save({"g_ema": blur}, path)
    with pytest.raises(CheckpointError, match="blur kernel"):
        load_generator(path)


# ------------------------------------------------------------------------------------------------
# latent_balance adapter with our Generator
# ------------------------------------------------------------------------------------------------
def test_stylegan2_adapter_with_our_generator(tmp_path):
    G = small_G(32)
    a = StyleGAN2Adapter(copy.deepcopy(G), truncation_psi=0.7, truncation_cutoff=None, device="cpu")
    assert a.latent_space == "w" and a.latent_dim == W and a.z_dim == Z and a.img_resolution == 32
    seeds = [3, 1, 4]
    z = a.sample_z(seeds)
    w = a.to_latent(z)
    with torch.no_grad():
        torch.testing.assert_close(w, G.mapping(z, None)[:, 0], rtol=0, atol=0)
        expected = G.synthesis(G.mapping(z, None, truncation_psi=0.7))
    img = a.synthesize(w)
    # the adapter keeps the [-1, 1] promise: the randomized network overshoots, the adapter clamps
    outside = int(((expected < -1) | (expected > 1)).sum())
    assert outside > 0 and a.clamp_counts == (outside, expected.numel())
    torch.testing.assert_close(img, expected.clamp(-1, 1), rtol=0, atol=0)
    assert img.shape == (3, 3, 32, 32) and not img.requires_grad
    torch.testing.assert_close(a.generate([4]), a.generate([4]), rtol=0, atol=0)  # same seed, same image
    # batch size: rounding only ((a) float32 convolutions blocked differently, ~1e-6 relative on |img| <~ 4)
    torch.testing.assert_close(a.generate([4]), img[2:], rtol=0, atol=2e-5)
    d = a.describe()
    assert d["truncation_psi"] == 0.7 and d["latent_space"] == "w" and d["num_ws"] == G.num_ws
    a0 = StyleGAN2Adapter(G, truncation_psi=0.0, device="cpu")
    x0 = a0.generate([0, 1])
    torch.testing.assert_close(x0[0], x0[1], rtol=0, atol=1e-6)  # (a) psi = 0: identical ws rows, a few ulp

    path = tmp_path / "ours.pt"
    save_generator(G, path)
    b = lb_load_generator(path, device="cpu", truncation_psi=0.7)
    assert isinstance(b, StyleGAN2Adapter) and b.id.startswith("stylegan2:ours.pt:")
    torch.testing.assert_close(b.generate(seeds), img, rtol=0, atol=0)


def test_restricted_opcodes_and_numpy(tmp_path):
    """BUILD may set state only on our stand-ins; numpy object arrays and extension codes are refused."""
    path = tmp_path / "x.pkl"
    path.write_bytes(b"\x80\x02c__builtin__\nset\n(dp0\nS'__doc__'\np1\nI1\nsb.")  # BUILD on the class `set`
    with pytest.raises(UnsafeCheckpointError, match="sets the state of a type"):
        load_generator(path)
    path.write_bytes(pickle.dumps({"G_ema": np.array([1, "a"], dtype=object)}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="numpy dtype 'O8'.*refused"):
        load_generator(path)
    path.write_bytes(b"\x80\x02\x82\x01.")  # EXT1 code 1
    with pytest.raises(UnsafeCheckpointError, match="extension codes"):
        load_generator(path)
    # Numeric numpy arrays and scalars are fine (they may appear in D / augment_pipe entries).
    path.write_bytes(pickle.dumps({"G": np.arange(6.0).reshape(2, 3), "x": np.float32(2)}, protocol=4))
    with pytest.raises(CheckpointError, match="'G' is a _NumpyArray, expected a persistent Generator"):
        load_generator(path)
