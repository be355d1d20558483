"""Users' own StyleGAN2 checkpoints (issue 13): overshooting images, grayscale and conditional models,
rosinality files without noise buffers, NVIDIA's seed scheme.

The checkpoints are written by the NVIDIA- and rosinality-structured writers of
``test_stylegan_checkpoints`` (no foreign code)."""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import attributes as attrs_pkg
from attributes.base import FunctionLabeler, check_images
from latent_balance import CallableGenerator, StyleGAN2Adapter, build_probes, load_generator
from cli_labelers import SPEC
from latent_balance.cli import main
from latent_balance.seeds import z_from_seeds
from stylegan_ops import Generator, load_generator as sg_load, save_generator
from test_stylegan_checkpoints import _dump, _snapshot, _src, nvidia_modules, to_rosinality  # noqa: F401
from test_stylegan_networks import W, Z, randomize_, small_G

TESTS = Path(__file__).parent


def _invoke(*args):
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _pickle(tmp_path, G, name="model.pkl"):
    path = tmp_path / name
    _dump(_snapshot(G, _src(tmp_path / "executed")), path)
    return path


def _light():
    return FunctionLabeler("light", ["dark", "light"],
                           lambda x: torch.stack([torch.sigmoid(-x.mean((1, 2, 3))), torch.sigmoid(x.mean((1, 2, 3)))], 1))


# ------------------------------------------------------------------------------------------------
# 1. images outside [-1, 1]
# ------------------------------------------------------------------------------------------------
def test_overshooting_generator_is_clamped_and_counted(tmp_path, nvidia_modules):
    G = small_G(32)  # randomized weights: images reach several units beyond [-1, 1]
    a = load_generator(_pickle(tmp_path, G), device="cpu")
    z = a.sample_z(np.arange(6))
    with torch.no_grad():
        raw = G.synthesis(G.mapping(z, None))
    outside = int(((raw < -1) | (raw > 1)).sum())
    assert 0 < outside < raw.numel()
    img = a.generate(np.arange(6))
    torch.testing.assert_close(img, raw.clamp(-1, 1), rtol=0, atol=0)
    assert a.clamp_counts == (outside, raw.numel())
    assert a.describe()["clamped_pixel_share"] == pytest.approx(outside / raw.numel())
    probs = attrs_pkg.label_images([_light()], img)  # raised "images must have values in [-1, 1]" before
    assert probs["light"].shape == (6, 2)
    ps = build_probes(a, [_light()], 8)
    share = ps.meta["generator"]["clamped_pixel_share"]
    assert ps.meta["clamp"]["synthesized"] == 8 * 3 * 32 * 32 and 0 < share < 1
    # the labelers' own range check stays, for images users pass in
    with pytest.raises(ValueError, match=r"values in \[-1, 1\]"):
        check_images(raw)


def test_in_range_images_are_returned_unchanged():
    """A generator already in [-1, 1] gets its own tensor back: nothing clamped, bit-identical."""
    out = torch.tanh(torch.randn(2, 3, 8, 8))
    g = CallableGenerator(lambda lat: out[: lat.shape[0]], z_dim=4, id="inrange")
    img = g.synthesize(torch.zeros(2, 4))
    assert torch.equal(img, out) and g.clamp_counts == (0, out.numel()) and g.clamped_pixel_share == 0.0


def test_cli_probe_on_overshooting_checkpoint(tmp_path, nvidia_modules):
    path = _pickle(tmp_path, small_G(32))
    (tmp_path / "labelers.yaml").write_text(SPEC)
    r = _invoke("probe", "--generator", path, "--labelers", tmp_path / "labelers.yaml", "--n", 20,
                "--out", tmp_path / "p.npz", "--device", "cpu")
    assert r.exit_code == 0, r.output
    info = json.loads(_invoke("info", tmp_path / "p.npz").output)
    assert 0 < info["generator"]["clamped_pixel_share"] < 1


# ------------------------------------------------------------------------------------------------
# 2. grayscale models
# ------------------------------------------------------------------------------------------------
def _gray_G():
    torch.manual_seed(0)
    G = Generator(z_dim=Z, c_dim=0, w_dim=W, img_resolution=32, img_channels=1, mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs=dict(channel_base=256, channel_max=32)).eval()
    randomize_(G, 0)
    return G


def test_grayscale_model_reports_one_channel_and_labels(tmp_path, nvidia_modules):
    G = _gray_G()
    path = _pickle(tmp_path, G)
    a = load_generator(path, device="cpu")
    assert a.img_channels == 1 and a.describe()["img_channels"] == 1
    img = a.generate([0, 1, 2])
    assert img.shape == (3, 1, 32, 32)
    lab = _light()
    np.testing.assert_array_equal(lab(img), lab(img.repeat(1, 3, 1, 1)))  # grayscale = gray repeated to RGB
    assert json.loads(_invoke("info", path).output)["img_channels"] == 1
    cg = CallableGenerator(lambda lat: torch.tanh(lat[:, :1, None, None].expand(-1, 1, 8, 8)), z_dim=4, id="gray")
    assert cg.img_channels == 1 and cg.describe()["img_channels"] == 1
    told = CallableGenerator(lambda lat: torch.tanh(lat[:, :1, None, None].expand(-1, 1, 8, 8)), z_dim=4, id="g",
                             img_resolution=8)  # told the size but not the channels: 3 assumed, then caught
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\].*img_channels=3"):
        told.generate([0])


def test_grayscale_model_through_the_cli(tmp_path, nvidia_modules):
    path = _pickle(tmp_path, _gray_G())
    (tmp_path / "labelers.yaml").write_text(SPEC.replace("cli_labelers:warm", "cli_labelers:light")
                                            .replace("name: warm", "name: light2"))
    r = _invoke("probe", "--generator", path, "--labelers", tmp_path / "labelers.yaml", "--n", 300,
                "--out", tmp_path / "p.npz", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert json.loads(_invoke("info", tmp_path / "p.npz").output)["generator"]["img_channels"] == 1


# ------------------------------------------------------------------------------------------------
# 3. conditional models
# ------------------------------------------------------------------------------------------------
def test_conditional_model_needs_a_class(tmp_path, nvidia_modules):
    G = small_G(32, c_dim=10)
    path = _pickle(tmp_path, G)
    with pytest.raises(ValueError, match="c_dim=10"):
        load_generator(path, device="cpu")
    a = load_generator(path, device="cpu", class_index=3)
    z = a.sample_z([5, 6])
    with torch.no_grad():
        ref = G(z, torch.eye(10)[[3, 3]]).clamp(-1, 1)
    torch.testing.assert_close(a.generate([5, 6]), ref, rtol=0, atol=0)
    d = a.describe()
    assert d["class_index"] == 3 and d["c"] == torch.eye(10)[3].tolist() and a.id.endswith(":class=3")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        load_generator(path, device="cpu", class_index=10)
    with pytest.raises(ValueError, match="unconditional"):
        load_generator(_pickle(tmp_path, small_G(32), "u.pkl"), device="cpu", class_index=0)

    (tmp_path / "labelers.yaml").write_text(SPEC)
    args = ["probe", "--generator", path, "--labelers", tmp_path / "labelers.yaml", "--n", 20,
            "--out", tmp_path / "p.npz", "--device", "cpu"]
    r = _invoke(*args)
    assert r.exit_code == 2 and "c_dim=10" in r.output and not (tmp_path / "p.npz").exists()
    r = _invoke(*args, "--class", 3)
    assert r.exit_code == 0, r.output
    meta = json.loads(_invoke("info", tmp_path / "p.npz").output)["generator"]
    assert meta["class_index"] == 3 and meta["c"][3] == 1.0
    r = _invoke(*args, "--class", 4)  # reuse with another class is refused
    assert r.exit_code == 2 and "class" in r.output


# ------------------------------------------------------------------------------------------------
# 4. rosinality checkpoints without noise buffers
# ------------------------------------------------------------------------------------------------
def test_rosinality_without_noise_buffers(tmp_path):
    G0 = small_G(32)
    ros = {k: v for k, v in to_rosinality(G0).items() if not k.startswith("noises.")}
    path = tmp_path / "official.pt"
    torch.save({"g_ema": ros, "latent_avg": G0.mapping.w_avg.clone()}, path)
    with pytest.warns(RuntimeWarning, match="constant noise"):
        G = sg_load(path)
    g = torch.Generator().manual_seed(0)  # the documented draw: layer order, one generator seeded 0
    expect = {}
    for i in range(1 + 2 * 3):
        r = 2 ** (2 + (i + 1) // 2)
        expect[i] = torch.randn([1, 1, r, r], generator=g)[0, 0]
    torch.testing.assert_close(G.synthesis.b4.conv1.noise_const, expect[0], rtol=0, atol=0)
    torch.testing.assert_close(G.synthesis.b16.conv0.noise_const, expect[3], rtol=0, atol=0)
    torch.testing.assert_close(G.synthesis.b32.conv1.noise_const, expect[6], rtol=0, atol=0)
    for k, v in G0.state_dict().items():  # everything else is the file's
        if "noise_const" not in k:
            assert torch.equal(v, G.state_dict()[k]), k
    assert "noise_const" in G.checkpoint_notes
    a = StyleGAN2Adapter(G, device="cpu")
    assert "noise_const" in a.describe()["checkpoint_notes"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        G2 = sg_load(path)
    assert torch.equal(G2.synthesis.b8.conv0.noise_const, G.synthesis.b8.conv0.noise_const)  # deterministic


# ------------------------------------------------------------------------------------------------
# 5. NVIDIA's seed scheme
# ------------------------------------------------------------------------------------------------
def test_nvidia_seed_scheme_matches_generate_py():
    seeds = [0, 1, 85, 2**31 + 3, 2**32 - 1]
    z = z_from_seeds(seeds, 512, scheme="nvidia")
    for i, s in enumerate(seeds):  # NVIDIA generate.py: np.random.RandomState(seed).randn(1, G.z_dim)
        np.testing.assert_array_equal(z[i], np.random.RandomState(s).randn(1, 512)[0].astype(np.float32))
    big = z_from_seeds([2**40 + 7], 16, scheme="nvidia")[0]
    ref = np.random.RandomState(np.array([7, 2**8], np.uint32)).randn(16).astype(np.float32)
    np.testing.assert_array_equal(big, ref)
    assert not np.allclose(z_from_seeds([85], 512)[0], z[2])  # the default scheme is another one
    with pytest.raises(ValueError, match="seed scheme"):
        z_from_seeds([1], 4, scheme="mt")


def test_seed_scheme_option_recorded_and_checked(tmp_path, nvidia_modules):
    path = _pickle(tmp_path, small_G(32))
    a = load_generator(path, device="cpu", seed_scheme="nvidia")
    np.testing.assert_array_equal(a.sample_z([85]).numpy()[0],
                                  np.random.RandomState(85).randn(Z).astype(np.float32))
    (tmp_path / "labelers.yaml").write_text(SPEC)
    args = ["probe", "--generator", path, "--labelers", tmp_path / "labelers.yaml", "--n", 10,
            "--out", tmp_path / "p.npz", "--device", "cpu"]
    r = _invoke(*args, "--seed-scheme", "nvidia")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "p.npz") as f:
        np.testing.assert_array_equal(f["z"][7], np.random.RandomState(7).randn(Z).astype(np.float32))
    assert json.loads(_invoke("info", tmp_path / "p.npz").output)["generator"]["seed_scheme"] == "nvidia"
    r = _invoke(*args)  # the default scheme on a file of nvidia seeds: refused, nothing mixed
    assert r.exit_code == 2 and "--seed-scheme" in r.output


# ------------------------------------------------------------------------------------------------
# probe -> fit -> sample --verify -> audit through the CLI, on a grayscale and on a conditional model
# ------------------------------------------------------------------------------------------------
def test_grayscale_and_conditional_pipelines_through_the_cli(tmp_path, nvidia_modules):
    from PIL import Image

    (tmp_path / "labelers.yaml").write_text(SPEC)
    labs = ["--labelers", tmp_path / "labelers.yaml", "--device", "cpu"]
    gray = _pickle(tmp_path, _gray_G(), "gray.pkl")
    # a gray image has red == blue, so only 'light' varies on it
    assert _invoke("probe", "--generator", gray, *labs, "--n", 300, "--out", tmp_path / "gp.npz").exit_code == 0
    assert _invoke("fit", "--probes", tmp_path / "gp.npz", "--out", tmp_path / "gm.npz", "--attributes",
                   "light").exit_code == 0
    r = _invoke("sample", "--generator", gray, "--model", tmp_path / "gm.npz", "--n", 12, "--out", tmp_path / "gds",
                "--verify", *labs, "--attributes", "light", "--block-size", 6)
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "gds" / "dataset_card.json").read_text())
    assert 0 < card["clamped_pixel_share"] < 1 and "img_channels=1" in card["notes"][0]
    assert "clamped" in (tmp_path / "gds" / "dataset_card.md").read_text()
    assert "clamped_pixel_share" not in json.loads((tmp_path / "gds" / "settings.json").read_text())["generator"]
    with Image.open(tmp_path / "gds" / "images" / "0000000.png") as im:
        assert im.mode == "L" and im.size == (32, 32)
    r = _invoke("audit", tmp_path / "gds", "--natural-n", 12, "--no-image-metrics")
    assert r.exit_code == 0, r.output

    cond = _pickle(tmp_path, small_G(32, c_dim=10), "cond.pkl")
    assert _invoke("probe", "--generator", cond, *labs, "--n", 300, "--out", tmp_path / "cp.npz", "--class", 3,
                   "--seed-scheme", "nvidia").exit_code == 0
    assert _invoke("fit", "--probes", tmp_path / "cp.npz", "--out", tmp_path / "cm.npz", "--attributes",
                   "warm").exit_code == 0
    base = ["sample", "--generator", cond, "--model", tmp_path / "cm.npz", "--n", 10, *labs, "--attributes", "warm",
            "--block-size", 5]
    r = _invoke(*base, "--out", tmp_path / "c4", "--class", 4)
    assert r.exit_code == 2 and "--class" in r.output and not (tmp_path / "c4").exists()
    r = _invoke(*base, "--out", tmp_path / "c0")
    assert r.exit_code == 2 and "c_dim=10" in r.output
    r = _invoke(*base, "--out", tmp_path / "c3", "--class", 3, "--seed-scheme", "nvidia", "--verify")
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "c3" / "settings.json").read_text())
    assert settings["generator"]["class_index"] == 3 and settings["generator"]["seed_scheme"] == "nvidia"
    assert settings["generator_spec"]["kwargs"] == {"class_index": 3, "seed_scheme": "nvidia"}
    rows = [json.loads(x) for x in (tmp_path / "c3" / "manifest.jsonl").read_text().splitlines()]
    assert all(row["generator"].endswith(":class=3") for row in rows)
    r = _invoke("audit", tmp_path / "c3", "--natural-n", 10, "--no-image-metrics")  # reloads class and scheme
    assert r.exit_code == 0, r.output
