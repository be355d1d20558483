"""The shipped StyleGAN2 face model (distilled from the face DCGAN) and its W-space boundaries."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import stylegan_ops
from latent_balance import available_generators, load_generator
from latent_balance.boundaries import BoundarySet
from latent_balance.seeds import z_from_seeds

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "latent_balance" / "models"
WEIGHTS = MODELS / "stylegan2_faces.pt"
BOUNDARIES = MODELS / "stylegan2_faces_boundaries.npz"


@pytest.fixture(scope="module")
def student():
    return load_generator("stylegan2-faces", device="cpu")


def _tools_module():
    spec = importlib.util.spec_from_file_location("distill_stylegan2_faces", ROOT / "tools" / "distill_stylegan2_faces.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses resolve their string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_registered_and_shipped_small():
    assert "stylegan2-faces" in available_generators()
    assert WEIGHTS.is_file() and BOUNDARIES.is_file() and (MODELS / "stylegan2_faces.md").is_file()
    total = sum(p.stat().st_size for p in (WEIGHTS, BOUNDARIES))
    assert total < 8e6, f"shipped files are {total / 1e6:.1f} MB; keep them to a few MB"
    # our own format: plain tensors and containers only
    payload = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert payload["format"] == stylegan_ops.FORMAT_NAME
    meta = payload["metadata"]
    assert meta["kimg"] > 0 and "teacher" in meta and meta["config"]["resolution"] == 64


def test_shapes_and_range(student):
    assert (student.z_dim, student.latent_dim, student.latent_space, student.img_resolution) == (100, 128, "w", 64)
    assert student.id.startswith("stylegan2-faces:")
    z = student.sample_z([0, 1, 2])
    w = student.to_latent(z)
    img = student.synthesize(w)
    assert z.shape == (3, 100) and w.shape == (3, 128) and img.shape == (3, 3, 64, 64)
    assert img.dtype == torch.float32 and img.min() >= -1 and img.max() <= 1
    assert img.std() > 0.1  # not a blank image
    # the adapter's W is the mapping network's output for the project's seed -> z map
    np.testing.assert_array_equal(z.numpy(), z_from_seeds([0, 1, 2], 100))


def test_same_seed_same_image(student):
    a = student.generate([5, 6, 7, 8])
    b = student.generate([7, 5])
    # (a) batch size changes only float32 rounding: ~1e-6 measured on |img| <= 1, 1e-5 = 80 ulp of 1
    torch.testing.assert_close(a[2], b[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(a[0], b[1], rtol=0, atol=1e-5)
    assert not torch.allclose(a[0], a[1])  # different seeds, different faces
    c = load_generator("stylegan2-faces", device="cpu").generate([5])
    torch.testing.assert_close(a[0], c[0], rtol=0, atol=1e-5)  # a fresh load gives the same image


def test_student_is_paired_with_teacher(student, dcgan):
    """Each student image is closer to the teacher's image of the same seed than to other seeds'."""
    seeds = np.arange(100, 116)
    s = student.generate(seeds)
    t = dcgan.generate(seeds)
    d = (s[:, None] - t[None]).abs().mean(dim=(2, 3, 4))  # [16, 16] L1 between all pairs
    same = d.diagonal()
    others = (d.sum(1) - same) / (len(seeds) - 1)
    # (b) >= 15 of 16 paired. 400 of 400 other seeds (2000-2399) are paired, so the per-seed failure rate
    # is <= 0.75% (rule of three); two failures in 16 then have probability <= C(16, 2) 0.0075^2 = 0.7%
    # (and 0 of 11 alternative 16-seed sets failed even once)
    assert float((same < others).float().mean()) >= 0.9, (same, others)


def test_boundaries_file_matches_model(student):
    b = BoundarySet.load(BOUNDARIES)
    assert b.meta_["generator"]["id"] == student.id
    assert b.meta_["generator"]["latent_space"] == "w"
    assert set(b.attributes_) == {"gender", "age", "smile"}
    assert b.normals_["gender"].shape == (1, student.latent_dim)
    for a in b.attributes_:
        assert 0.5 <= b.report_[a]["accuracy"] <= 1
    # posteriors for the model's own latents
    w = student.to_latent(student.sample_z(np.arange(8))).numpy()
    p = b.predict_proba(w)
    assert p["gender"].shape == (8, 2)
    np.testing.assert_allclose(p["smile"].sum(1), 1, atol=1e-9)


def test_truncation_and_weights_argument(student):
    trunc = load_generator("stylegan2-faces", device="cpu", truncation_psi=0.0)
    img = trunc.generate([0, 1])
    torch.testing.assert_close(img[0], img[1], rtol=0, atol=1e-5)  # psi = 0: every w becomes w_avg ((a) ulps)
    assert trunc.describe()["truncation_psi"] == 0.0
    same = load_generator("stylegan2-faces", device="cpu", weights=WEIGHTS)
    assert same.id == student.id
    with pytest.raises(FileNotFoundError, match="missing"):
        load_generator("stylegan2-faces", device="cpu", weights=ROOT / "no_such_model.pt")


def test_training_tool_features_mirror_synthesis():
    """The training tool's block-by-block synthesis equals the network's own forward."""
    tool = _tools_module()
    G = stylegan_ops.load_generator(WEIGHTS)
    ws = G.mapping(torch.from_numpy(z_from_seeds([1, 2], 100)), None)
    with torch.no_grad():
        img, feats = tool.synthesis_with_features(G, ws, fused_modconv=True, noise_mode="const")
        ref = G.synthesis(ws, noise_mode="const", fused_modconv=True)
    torch.testing.assert_close(img, ref, rtol=0, atol=0)
    assert feats[32].shape[-1] == 32 and feats[64].shape[-1] == 64


@pytest.mark.slow
def test_training_tool_trains_resumes_and_exports(tmp_path):
    """Two stretches of the training tool continue one run; export writes the checkpoint's G_ema."""
    tool = _tools_module()
    run = tmp_path / "run"
    common = ["--run", str(run), "--threads", "2", "--batch", "2", "--tick-kimg", "0.002", "--eval-kimg", "0.004",
              "--adv", "0.1", "--d-arch", "patch", "--device", "cpu"]

    def log():
        return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]

    tool.main(["train", "--kimg", "0.004", *common])
    assert log()[-1]["event"] == "stop" and log()[-1]["kimg"] == pytest.approx(0.004)
    assert (run / "snapshots" / "ema_000000.pt").is_file()
    tool.main(["train", "--kimg", "0.006", *common])  # resumes from checkpoint.pt
    assert [r["step"] for r in log() if r["event"] == "start"] == [0, 2]
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["device_name"].startswith("cpu")
    with pytest.raises(SystemExit, match="differs from the run's stored config"):
        tool.main(["train", "--kimg", "0.008", *common, "--adv", "0.2"])

    out = tmp_path / "exported.pt"
    tool.main(["export", "--run", str(run), "--out", str(out)])
    meta = torch.load(out, map_location="cpu", weights_only=True)["metadata"]
    assert meta["exported_from"] == "checkpoint" and meta["step"] == 3 and meta["device"].startswith("cpu")
    G = stylegan_ops.load_generator(out)
    for k, v in ckpt["G_ema"].items():
        torch.testing.assert_close(G.state_dict()[k], v, rtol=0, atol=0)


def test_model_card_states_provenance():
    card = (MODELS / "stylegan2_faces.md").read_text(encoding="utf-8")
    meta = torch.load(WEIGHTS, map_location="cpu", weights_only=True)["metadata"]
    for needle in ("gan-face-generate", "1.1.1", "MIT", "DigiFace1M", "tools/distill_stylegan2_faces.py"):
        assert needle in card, needle
    assert f"{meta['kimg']:g}" in card or str(round(meta["kimg"])) in card
    assert json.loads(json.dumps(meta))  # plain JSON metadata


def test_cli_samples_with_the_shipped_model_by_name(tmp_path):
    """`sample --model stylegan2-faces` uses the shipped subgroup model and, by default, its generator."""
    from click.testing import CliRunner

    from latent_balance.cli import main
    from latent_balance.export import read_manifest

    out = tmp_path / "ds"
    r = CliRunner().invoke(main, ["sample", "--model", "stylegan2-faces", "--n", "8", "--out", str(out),
                                  "--sharpness", "1", "--seed", "3"])
    assert r.exit_code == 0, r.output
    rows = read_manifest(out)
    assert len(rows) == 8 and len(list((out / "images").glob("*.png"))) == 8
    settings = json.loads((out / "settings.json").read_text())
    assert settings["generator"]["id"].startswith("stylegan2-faces:")
    assert settings["generator"]["latent_space"] == "w"
    # the shipped model is the student's, over gender x age x smile
    from latent_balance import SubgroupModel

    model = SubgroupModel.load(MODELS / "stylegan2_faces_model.npz")
    assert list(model.space_.attributes) == ["gender", "age", "smile"]
    assert model.meta_["generator"]["id"] == settings["generator"]["id"]
    # a model file of another generator with a wrong --generator is refused with exit code 2
    bad = CliRunner().invoke(main, ["sample", "--model", "stylegan2-faces", "--generator", "dcgan-faces", "--n", "4",
                                    "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2, bad.output
    assert not (tmp_path / "bad" / "images").exists()
