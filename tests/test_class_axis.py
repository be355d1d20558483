"""The class of a conditional generator as a sampling axis (issue 13, item 3, "go further").

A tiny conditional StyleGAN2 (our networks, 4 classes) is sampled over all its classes; the test labeler
``warm`` (red minus blue, :mod:`cli_labelers`) depends on the class on this network, so a target over
class x warm is not met by the natural generator.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from attributes.base import FunctionLabeler
from latent_balance import BalancedSampler, StyleGAN2Adapter, SubgroupModel, build_probes, load_generator
from latent_balance.cli import main
from latent_balance.export import images_to_uint8
from latent_balance.seeds import z_from_seeds
from stylegan_ops import save_generator
from test_stylegan_networks import Z, small_G

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
import cli_labelers  # noqa: E402
from cli_labelers import SPEC  # noqa: E402

K = 4  # classes of the test network
SPEC_WARM = "labelers:\n" + SPEC[SPEC.index("  - name: warm"):]  # the CLI spec of the warm labeler only


def _warm():
    return FunctionLabeler("warm", ["cool", "warm"], cli_labelers.warm, id="test-warm-v1")


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _tv(p, q):
    return 0.5 * float(np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


@pytest.fixture(scope="module")
def G():
    return small_G(32, c_dim=K)


@pytest.fixture(scope="module")
def ckpt(G, tmp_path_factory):
    path = tmp_path_factory.mktemp("classaxis") / "cond.pt"
    save_generator(G, path)
    return path


@pytest.fixture(scope="module")
def fitted(ckpt):
    gen = load_generator(ckpt, device="cpu", classes="all")
    probes = build_probes(gen, [_warm()], 1200, path=ckpt.parent / "probes.npz", show_progress=False)
    model = SubgroupModel(attributes=["class", "warm"]).fit(probes)
    return gen, probes, model


# ------------------------------------------------------------------------------------------------
def test_adapter_over_classes(G):
    gen = StyleGAN2Adapter(G, classes=[0, 2, 3], device="cpu")
    assert (gen.z_dim, gen.latent_dim) == (Z + 3, G.w_dim + 3)
    assert gen.id.endswith(":classes=0,2,3")
    seeds = np.arange(3000)
    z = gen.sample_z(seeds)
    # the prior z of each seed is untouched (the same as a single-class generator's); the class is an
    # independent draw, deterministic in the seed
    assert torch.equal(z[:, :Z], torch.from_numpy(z_from_seeds(seeds, Z)))
    cls = gen.classes_of(z)
    assert np.array_equal(cls, np.asarray(gen.classes)[gen.class_of_seeds(seeds)])
    assert np.array_equal(gen.classes_of(gen.sample_z(seeds)), cls)
    # uniform prior: each of 3 classes has count ~ Binomial(3000, 1/3), sd = sqrt(3000 * 1/3 * 2/3) = 25.8;
    # 5 sd (129) bounds all three with a false-alarm rate below 1e-5
    counts = np.array([np.sum(cls == k) for k in (0, 2, 3)])
    assert np.all(np.abs(counts - 1000) < 129), counts
    # the latent: w = mapping(z, onehot(class)) (the network's own call, an independent reference), then
    # the one-hot block; synthesis reads only w
    lat = gen.to_latent(z[:64])
    c = torch.eye(K)[torch.from_numpy(cls[:64])]
    ref = G.mapping(z[:64, :Z], c, truncation_psi=1)[:, 0]
    assert torch.allclose(lat[:, :G.w_dim], ref, atol=1e-6)
    assert torch.equal(lat[:, G.w_dim:], z[:64, Z:])
    img = gen.synthesize(lat[:4])
    ref_img = G.synthesis(ref[:4, None, :].repeat(1, G.num_ws, 1), noise_mode="const").clamp(-1, 1)
    assert torch.allclose(img, ref_img, atol=1e-5)
    (known,) = gen.known_attributes
    assert known.name == "class" and known.classes == ("0", "2", "3")
    probs = known.from_latent(lat)
    assert np.array_equal(probs, np.eye(3)[gen.class_of_seeds(seeds[:64])])
    d = gen.describe()
    assert d["classes"] == [0, 2, 3] and d["class_prior"] == pytest.approx([1 / 3] * 3)
    assert "splitmix64" in d["class_scheme"] and d["known_attributes"]["class"]["columns"] == [G.w_dim, G.w_dim + 3]
    # assign_classes: the same seed as another class
    z7 = gen.assign_classes(z[:5], 2)
    assert np.all(gen.classes_of(z7) == 2) and torch.equal(z7[:, :Z], z[:5, :Z])
    with pytest.raises(ValueError, match=r"not among the sampled classes \[0, 2, 3\]"):
        gen.assign_classes(z[:5], 1)


def test_class_prior(G):
    gen = StyleGAN2Adapter(G, classes=[1, 3], class_prior=[3, 1], device="cpu")
    assert ":prior=" in gen.id and gen.describe()["class_prior"] == [0.75, 0.25]
    cls = gen.class_of_seeds(np.arange(4000))
    # count of the first class ~ Binomial(4000, 0.75): sd = sqrt(4000 * 0.75 * 0.25) = 27.4; 5 sd = 137
    assert abs(np.sum(cls == 0) - 3000) < 137


def test_bad_class_input_is_refused(G, tmp_path):
    with pytest.raises(ValueError, match=r"integers in \[0, 4\)"):
        StyleGAN2Adapter(G, classes=[0, 4], device="cpu")
    with pytest.raises(ValueError, match="not both"):
        StyleGAN2Adapter(G, classes=[0, 1], class_index=0, device="cpu")
    with pytest.raises(ValueError, match="distinct"):
        StyleGAN2Adapter(G, classes=[1, 1], device="cpu")
    with pytest.raises(ValueError, match="class_prior must be 2 non-negative"):
        StyleGAN2Adapter(G, classes=[0, 1], class_prior=[1, -1], device="cpu")
    with pytest.raises(ValueError, match=r"unconditional \(c_dim=0\): classes"):
        StyleGAN2Adapter(small_G(32), classes="all", device="cpu")
    with pytest.raises(ValueError, match="unconditional"):
        load_generator("dcgan-faces", device="cpu", classes="all")
    # the CLI: nothing written on refusal
    cond, uncond = tmp_path / "cond.pt", tmp_path / "uncond.pt"
    save_generator(G, cond)
    save_generator(small_G(32), uncond)
    (tmp_path / "labelers.yaml").write_text(SPEC)
    base = ["probe", "--labelers", tmp_path / "labelers.yaml", "--device", "cpu", "--n", 8]
    for gen, extra, message in [(uncond, ["--classes", "all"], "c_dim=0"),
                                (cond, ["--classes", "0,1", "--class", 2], "not both"),
                                (cond, ["--class", 2, "--classes", "0,1"], "not both"),
                                (cond, ["--classes", "0,4"], "[0, 4)"),
                                (cond, ["--classes", "0,x"], "comma-separated class indices")]:
        out = tmp_path / "p.npz"
        r = _invoke(*base, "--generator", gen, "--out", out, *extra)
        assert r.exit_code == 2 and message in r.output, r.output
        assert not out.exists()


def test_probes_record_the_class_exactly(fitted):
    gen, probes, model = fitted
    assert probes.classes["class"] == ("0", "1", "2", "3")
    assert np.array_equal(probes.probs["class"], np.eye(K)[gen.class_of_seeds(probes.seeds)])
    assert probes.meta["labelers"]["class"]["id"] == "generator-class:0,1,2,3"
    # the attribute matters: warm's share differs between classes by more than its sampling error
    warm = probes.labels("warm")
    shares = [warm[probes.labels("class") == k].mean() for k in range(K)]
    assert max(shares) - min(shares) > 0.15, shares  # each share's sd <= sqrt(.25 / 250) = 0.032
    with pytest.raises(ValueError, match="knows the attribute"):
        build_probes(gen, [FunctionLabeler("class", ["a", "b"], lambda x: torch.full((len(x), 2), .5))], 4,
                     show_progress=False)


def test_posterior_is_exact_on_the_class(fitted):
    gen, probes, model = fitted
    P = model.predict_proba(probes.latents)
    cls = probes.labels("class")
    j = model.space_.attributes.index("class")
    cell_cls = np.array([int(c[j]) for c in model.space_.cells])
    assert np.all(P[cell_cls[None, :] != cls[:, None]] == 0)
    assert np.allclose(P.sum(axis=1), 1)


@pytest.mark.parametrize("verify", [True, False])
def test_uniform_over_class_and_attribute(fitted, verify):
    gen, probes, model = fitted
    n = 400
    s = BalancedSampler(gen, model, None, verify=verify, labelers=[_warm()], seed=3, block_size=200)
    res = s.sample(n, images=True)
    uniform = np.full(len(s.space), 1 / len(s.space))
    labelled = np.bincount(s.space.cell_of_probs(res.probs), minlength=len(s.space)) / n
    natural = model.natural_["proportions"]
    # the image's class is the one its latent and z carry and its labels report
    cls = gen.classes_of(res.z)
    assert np.array_equal(cls, gen.classes_of(res.latents))
    assert np.array_equal(res.probs["class"].argmax(1), cls)
    # the class marginal is exact in both modes: each cell's outputs are proposed in its class
    assert np.array_equal(np.bincount(cls, minlength=K), np.full(K, n // K))
    if verify:
        assert _tv(labelled, uniform) == 0.0
    else:
        # latent-only: labelled cells differ from the intended ones by the warm labeler's confusion only.
        # E|N_c - E N_c| <= sqrt(Var N_c) <= sqrt(E N_c) = sqrt(n / 8), so the expected excess TV is at most
        # 0.5 * 8 * sqrt(n / 8) / n = sqrt(2 / n) = 0.071 at n = 400 over the plan's predicted TV
        assert _tv(labelled, uniform) <= s.plan_["predicted_tv"] + np.sqrt(2 / n)
        # and clearly better than the natural generator (whose TV to uniform is ~0.13 here)
        assert _tv(labelled, uniform) < 0.6 * _tv(natural, uniform)
    # regenerating an image from its seed and class gives the same image (to float rounding: CPU kernels
    # round differently with the batch's composition, measured <= 6e-6 on this network); another class
    # gives another image
    z2 = gen.assign_classes(gen.sample_z(res.seeds[:6]), cls[:6])
    assert torch.equal(z2, torch.from_numpy(res.z[:6]))
    assert torch.allclose(gen.synthesize(gen.to_latent(z2)), res.images[:6], rtol=0, atol=1e-4)
    other = gen.synthesize(gen.to_latent(gen.assign_classes(z2, (cls[:6] + 1) % K)))
    assert (other - res.images[:6]).abs().amax(dim=(1, 2, 3)).min() > 0.05


def test_steering_the_class_saves_proposals(fitted):
    gen, probes, model = fitted
    s = BalancedSampler(gen, model, None, labelers=[_warm()], seed=5, block_size=400)
    steered = s.sample(400)
    # the plan predicts the steered acceptance, E[a_g | class k] = E[a_g] / prior(k): the latents accepted
    # agree with those it predicts for the proposals made within a factor 1.5, where the unsteered
    # prediction would be 4x off. (Each rate is estimated on the ~30 held-out probes of its cell's class
    # and label, relative sd sqrt((1 - p) / (30 p)) <= 0.33 for p >= 0.2; over 8 components ~0.12, so
    # 1.5 is > 3 sd.)
    props = np.asarray(steered.stats["latent_proposals_per_component"], float)
    predicted = float(props @ np.asarray(s.plan_["acceptance"]))
    accepted = float(np.sum(steered.stats["accepted_per_component"]))
    assert abs(np.log(accepted / predicted)) < np.log(1.5), (accepted, predicted)
    s._steer = None  # the same plan, proposals from the prior (class from the seed) and rejection only
    rejected = s.sample(400)
    # both draw each cell from p(x | cell) (a class-k cell's posterior is 0 off class k); steering divides the
    # proposals per accepted latent by prior(k) = 1/4, so fewer than half as many (the 64-proposal minimum
    # batch blurs the factor 4)
    a, b = steered.stats["latent_proposals"], rejected.stats["latent_proposals"]
    assert a < b / 2, (a, b)
    assert np.array_equal(np.bincount(gen.classes_of(rejected.z), minlength=K), np.full(K, 100))


def test_class_target_and_cli_dataset(ckpt, fitted, tmp_path):
    gen, probes, model = fitted
    # a given class distribution: the class marginal of the outputs is exactly its allocation
    s = BalancedSampler(gen, model, {"marginals": {"class": {"0": 0.5, "1": 0.25, "2": 0.25, "3": 0.0}}},
                        labelers=[_warm()], seed=1, block_size=400)
    res = s.sample(400)
    assert np.array_equal(np.bincount(gen.classes_of(res.z), minlength=K), [200, 100, 100, 0])

    path = ckpt
    (tmp_path / "labelers.yaml").write_text(SPEC_WARM)
    labs = ["--labelers", tmp_path / "labelers.yaml", "--device", "cpu"]
    probe_file = ckpt.parent / "probes.npz"  # the fixture's probes, made through the API: reused
    r = _invoke("probe", "--generator", path, *labs, "--n", 1200, "--out", probe_file, "--classes", "all")
    assert r.exit_code == 0, r.output
    r = _invoke("probe", "--generator", path, *labs, "--n", 1200, "--out", probe_file, "--classes", "0,1")
    assert r.exit_code == 2 and "classes=0,1,2,3" in r.output  # another class set: refused, the file kept
    assert _invoke("fit", "--probes", probe_file, "--out", tmp_path / "m.npz", "--attributes",
                   "class,warm").exit_code == 0
    base = ["sample", "--generator", path, "--model", tmp_path / "m.npz", "--n", 16, *labs, "--attributes",
            "warm", "--block-size", 8, "--verify"]
    r = _invoke(*base, "--out", tmp_path / "ds", "--classes", "all")
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "ds" / "settings.json").read_text())
    assert settings["generator"]["classes"] == [0, 1, 2, 3]
    assert settings["generator_spec"]["kwargs"] == {"classes": "all"}
    rows = [json.loads(x) for x in (tmp_path / "ds" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(row["labelled_cell"] for row in rows) == sorted(s.space.ids * 2)
    assert all(row["labelled_cell"].split("|")[0] == str(row["class"]) for row in rows)
    # each image regenerates from its seed and class: the same 8-bit pixels, up to a rounding flip of 1 where
    # a value lies within float noise (CPU kernels round with the batch's composition, ~1e-6) of a .5 step
    g2 = load_generator(path, device="cpu", classes="all")
    for row in rows[:4]:
        z = g2.assign_classes(g2.sample_z([row["seed"]]), row["class"])
        want = images_to_uint8(g2.synthesize(g2.to_latent(z)).cpu())[0].astype(int)
        with Image.open(tmp_path / "ds" / row["file"]) as im:
            got = np.asarray(im).astype(int)
        assert np.abs(got - want).max() <= 1 and np.mean(got != want) < 0.01
    # resume: the same command finishes without change; another class set or a single class is refused
    assert _invoke(*base, "--out", tmp_path / "ds", "--classes", "all").exit_code == 0
    r = _invoke(*base, "--out", tmp_path / "ds", "--classes", "0,1")
    assert r.exit_code == 2
    r = _invoke(*base, "--out", tmp_path / "ds2", "--class", 1)
    assert r.exit_code == 2 and not (tmp_path / "ds2").exists()
    r = _invoke("audit", tmp_path / "ds", "--natural-n", 16, "--no-image-metrics")
    assert r.exit_code == 0, r.output
    audit = json.loads((tmp_path / "ds" / "report" / "audit.json").read_text())
    assert audit["achieved"]["tv"] == 0.0


def test_natural_source_and_generator_audit_know_the_class(fitted):
    from latent_balance.audit import audit_generator
    from latent_balance.sources import NaturalSource

    gen, probes, model = fitted
    src = NaturalSource(gen, [_warm()], attributes=["class", "warm"], seed=0)
    out = src.produce(0, np.zeros(12, np.int64))
    # the natural source draws each seed's own class (no steering); manifests get it as the 'class' field
    want = np.asarray(gen.classes)[gen.class_of_seeds(out.seeds)]
    assert np.array_equal(out.fields["class"], want)
    assert np.array_equal(out.probs["class"], np.eye(K)[want])
    res = audit_generator(gen, [_warm()], ["class", "warm"], n=40)
    # seeds 0..39 by the class scheme: the audit's class marginal is their class counts
    counts = np.bincount(gen.class_of_seeds(np.arange(40)), minlength=K)
    assert res["marginals"]["class"]["counts"] == counts.tolist()
