"""Forgetting a person (issue #18): identity embeddings, person files, the sampler's exclusion, the CLI.

Kept small: dlib's face-recognition network costs ~0.1 s per 64 px face on one CPU core here, so the
tests embed tens of images, and the persons of the sampler tests are built directly from a seed's
latent and embedding (their radius and threshold chosen by the test) instead of fitted on probes.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attributes.faces import _work_images, to_uint8
from attributes.identity import (SAME_PERSON_THRESHOLD, _MODEL_FILE, _PACKAGE, calibrate_threshold,
                                 distance)
from _lb_common import package_file

PERSON_SEED = 12


@pytest.fixture(scope="module")
def sg(sg2_faces):
    return sg2_faces


@pytest.fixture(scope="module")
def embedder(face_embedder):
    return face_embedder


@pytest.fixture(scope="module")
def faces(sg):
    return sg.generate(np.arange(100, 110))


def _person(sg, embedder, seeds=(PERSON_SEED,), threshold=0.55, radius=60.0, name="p"):
    """A person whose references are the images of `seeds`, with the given threshold and radius."""
    from latent_balance.forget import Person

    lat = sg.to_latent(sg.sample_z(np.asarray(seeds))).numpy()
    emb = embedder(sg.synthesize(torch.from_numpy(lat)))
    meta = {"generator": {k: v for k, v in sg.describe().items() if k != "clamped_pixel_share"},
            "embedder": embedder.id, "threshold": threshold, "radius": radius}
    return Person(emb, lat, threshold, radius, meta, name=name)


# -- identity model ----------------------------------------------------------------------------------
def test_embeddings_equal_dlib_on_the_same_landmarks(faces, embedder):
    """Our chips + network == dlib's compute_face_descriptor(img, shape, 0, 0.25) on the aligner's work
    image and landmarks (the same chip extraction and network: only float rounding may differ)."""
    import dlib

    imgs = faces[:3]
    ours = embedder(imgs)
    assert ours.shape == (3, 128) and ours.dtype == np.float32
    al = embedder.aligner
    pad, scale, rect = al._geometry(64, 64)
    big = np.ascontiguousarray(_work_images(to_uint8(imgs), pad, scale).permute(0, 2, 3, 1).numpy())
    pts, fallback = al.landmarks(imgs)
    assert not fallback.any()
    net = dlib.face_recognition_model_v1(str(package_file(_PACKAGE, *_MODEL_FILE)))
    for i in range(3):
        work = np.round((pts[i] + pad + 0.5) * scale - 0.5).astype(int)  # back to the work image's integer pixels
        shape = dlib.full_object_detection(dlib.rectangle(*rect), dlib.points([dlib.point(int(x), int(y))
                                                                               for x, y in work]))
        ref = np.array(net.compute_face_descriptor(big[i], shape, 0, 0.25))
        np.testing.assert_allclose(ours[i], ref, atol=1e-5)


def test_same_face_is_same_person_and_nearest(faces, embedder):
    e = embedder(faces)
    mirror = embedder(faces.flip(3))
    shifted = embedder(torch.roll(faces, 1, dims=3))
    # a face and its mirror / a one-pixel shift are the same person under dlib's threshold
    assert (np.diag(distance(e, mirror)) < SAME_PERSON_THRESHOLD).all()
    d_shift = distance(e, shifted)
    assert (np.diag(d_shift) < SAME_PERSON_THRESHOLD).all()
    # and a face's shifted copy is nearer to it than any other face is (identification by nearest neighbour)
    other = distance(e, e) + np.diag(np.full(len(e), np.inf))
    assert (np.diag(d_shift) < other.min(axis=1)).all()
    np.testing.assert_allclose(np.diag(distance(e, e)), 0.0, atol=1e-3)


def test_embedder_refuses_bad_images(embedder):
    with pytest.raises(ValueError):
        embedder(torch.zeros(2, 3, 64))
    with pytest.raises(ValueError, match="chips must be uint8"):
        embedder.embed_chips(np.zeros((1, 64, 64, 3), np.uint8))


def test_calibrate_threshold():
    same = [0.1, 0.2, 0.3]
    diff = np.arange(1, 101) / 100 + 0.3  # 0.31 .. 1.30
    assert calibrate_threshold(same, diff) == pytest.approx(0.31)  # below every different pair
    assert calibrate_threshold(same, diff, max_false_match=0.05) == pytest.approx(0.36)  # 5 of 100 below
    assert (np.asarray(diff) < calibrate_threshold(same, diff, 0.05)).sum() == 5
    with pytest.raises(ValueError, match="at least one"):
        calibrate_threshold([], diff)
    with pytest.raises(ValueError, match="max_false_match"):
        calibrate_threshold(same, diff, 1.0)


# -- person files ------------------------------------------------------------------------------------
def test_person_from_seed(sg, embedder, tmp_path):
    from latent_balance.forget import PROBE_SCALES, load_person, person_from_seeds, save_person

    p = person_from_seeds(sg, [PERSON_SEED], probes_per_reference=12, natural_probes=0, threshold=0.5, seed=3,
                          embedder=embedder)
    img = sg.generate(np.array([PERSON_SEED]))
    assert distance(embedder(img), p.embeddings)[0, 0] < 1e-3  # its image matches itself
    assert p.matches(embedder(img)).all()
    d, ident = p.probes_["latent_distance"], p.probes_["identity_distance"]
    # sane radius: positive, no larger than the farthest probe, and the nearest probes (scale 0.25: ~0.25
    # natural spreads away, where every probe of the measurement in docs/forget.md matched) inside it
    assert 0 < p.radius <= d.max()
    near = np.resize(np.asarray(PROBE_SCALES), 12) == 0.25
    assert (d[near] <= p.radius).all() and (ident[near] < 0.5).all()
    assert p.meta["sources"] == {"seeds": [PERSON_SEED]}
    path = tmp_path / "p.npz"
    save_person(p, path)
    q = load_person(path, sg)
    assert q.fingerprint == p.fingerprint and q.radius == p.radius and q.threshold == 0.5
    np.testing.assert_array_equal(q.embeddings, p.embeddings)


def test_person_bad_input(sg, dcgan, embedder, tmp_path):
    from latent_balance.forget import PersonFileError, load_person, make_person, person_from_seeds, save_person

    with pytest.raises(ValueError, match="at least one seed"):
        person_from_seeds(sg, [])
    with pytest.raises(ValueError, match="reference latents must be"):
        make_person(sg, np.zeros((1, 7), np.float32), embedder=embedder)
    lat = sg.to_latent(sg.sample_z(np.array([PERSON_SEED]))).numpy()
    with pytest.raises(ValueError, match="no face found"):  # a flat grey image
        make_person(sg, lat, torch.zeros(1, 3, 64, 64), embedder=embedder, probes_per_reference=1, natural_probes=0)
    assert embedder.has_face(sg.generate(np.array([PERSON_SEED]))).all()
    with pytest.raises(ValueError, match="re-frame"):  # a photo of the wrong size
        make_person(sg, lat, torch.zeros(1, 3, 100, 80), embedder=embedder, probes_per_reference=1, natural_probes=0)
    with pytest.raises(ValueError, match="one image per reference"):
        make_person(sg, lat, torch.zeros(2, 3, 64, 64), embedder=embedder)
    # a person file of another generator
    path = tmp_path / "p.npz"
    save_person(_person(sg, embedder), path)
    with pytest.raises(PersonFileError, match="another generator.*id"):
        load_person(path, dcgan)
    # corrupt and foreign files
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a person")
    with pytest.raises(PersonFileError, match="corrupt or not"):
        load_person(bad)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PersonFileError):
        load_person(trunc)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(PersonFileError):
        load_person(tmp_path / "other.npz")
    with pytest.raises(PersonFileError):
        load_person(tmp_path / "missing.npz")


# -- the sampler ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sg_model():
    from latent_balance import SubgroupModel
    from latent_balance.generators import _packaged_model_path

    return SubgroupModel.load(str(_packaged_model_path("stylegan2-faces")))


def test_latent_filter_rejects_the_region(sg, sg_model, embedder):
    """Latents only: no output lies in the person's region, and without the exclusion some do (the radius
    is the median latent distance from the person to natural latents, so about half of them are inside)."""
    from latent_balance import BalancedSampler

    ref = sg.to_latent(sg.sample_z(np.array([PERSON_SEED]))).numpy()
    nat = sg.to_latent(sg.sample_z(np.arange(5000, 5200))).numpy()
    radius = float(np.median(np.linalg.norm(nat - ref, axis=1)))
    person = _person(sg, embedder, radius=radius)
    plain = BalancedSampler(sg, sg_model, seed=5, block_size=64).sample(64)
    assert person.inside(plain.latents).any()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = BalancedSampler(sg, sg_model, seed=5, block_size=64, exclude=[person])
        res = s.sample(64)
    assert any("only filtered in latent space" in str(x.message) for x in w)
    assert not person.inside(res.latents).any()
    assert res.stats["exclude_latent_rejected"][0] > 0 and res.stats["exclude"][0]["radius"] == radius
    again = BalancedSampler(sg, sg_model, seed=5, block_size=64, exclude=[person]).sample(64)
    np.testing.assert_array_equal(again.seeds, res.seeds)  # same seed, same outputs


def test_latent_filter_reduces_matches_near_the_person(sg, embedder):
    """On latents concentrated around the person (the probe scales, a fresh draw), the fitted region's
    filter keeps a lower match rate than it removes, and removes matches."""
    from latent_balance.forget import PROBE_SCALES, make_person

    ref = sg.to_latent(sg.sample_z(np.array([PERSON_SEED]))).numpy()
    p = make_person(sg, ref, probes_per_reference=18, natural_probes=0, threshold=0.5, seed=1, embedder=embedder)
    rng = np.random.default_rng(99)
    sigma = sg.to_latent(sg.sample_z(np.arange(7000, 7256))).numpy().std(axis=0)
    scales = np.resize(np.asarray(PROBE_SCALES), 24)
    lat = (ref + scales[:, None] * sigma * rng.standard_normal((24, ref.shape[1]))).astype(np.float32)
    match = p.matches(embedder(sg.synthesize(torch.from_numpy(lat))))
    kept = ~p.inside(lat)
    assert match.any() and (~kept).any()
    assert match[kept].sum() < match.sum()
    assert (match[kept].mean() if kept.any() else 0.0) < match[~kept].mean()


def _written_images(folder: Path) -> torch.Tensor:
    from PIL import Image

    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    arr = np.stack([np.asarray(Image.open(folder / r["file"]).convert("RGB")) for r in rows])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_sample_exclude_cli_verified(sg, embedder, tmp_path):
    """`sample --exclude` with verification: no written image matches the person (re-embedded from the PNGs),
    while the same run without --exclude writes matches (threshold 0.55: about half of this generator's faces
    are within it of a given face, docs/forget.md, so 12 images without any would be a 1-in-1000 event);
    resuming with another exclusion is refused."""
    from latent_balance.cli import main
    from latent_balance.forget import save_person

    person = _person(sg, embedder, threshold=0.55, radius=60.0)
    pfile = tmp_path / "jane_doe.npz"
    save_person(person, pfile)
    common = ["sample", "--model", "stylegan2-faces", "--n", "12", "--block-size", "12", "--verify", "--seed", "3",
              "--device", "cpu", "--encode-workers", "0"]
    r = CliRunner().invoke(main, common + ["--out", str(tmp_path / "plain")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert person.matches(embedder(_written_images(tmp_path / "plain"))).any()
    out = tmp_path / "forgot"
    r = CliRunner().invoke(main, common + ["--out", str(out), "--exclude", str(pfile)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    imgs = _written_images(out)
    assert len(imgs) == 12 and not person.matches(embedder(imgs)).any()
    card = json.loads((out / "dataset_card.json").read_text())
    fg = card["forget"]
    assert fg["persons"][0]["images_rejected"] >= 1 and fg["images_checked"] >= 12 + fg["persons"][0]["images_rejected"]
    assert "within the person's threshold" in fg["guarantee"]
    assert json.loads((out / "settings.json").read_text())["exclude"][0]["fingerprint"] == person.fingerprint
    assert "excluded person 1" in (out / "dataset_card.md").read_text()
    for f in ("settings.json", "dataset_card.json", "dataset_card.md", "manifest.jsonl"):  # the file's name
        assert "jane_doe" not in (out / f).read_text()  # could identify the person: never recorded
    # resume with another exclusion: refused, nothing changed
    other = tmp_path / "other.npz"
    save_person(_person(sg, embedder, threshold=0.5, radius=60.0), other)
    before = (out / "manifest.jsonl").read_bytes()
    r = CliRunner().invoke(main, common + ["--out", str(out), "--exclude", str(other)])
    assert r.exit_code == 2 and "exclude" in r.output
    assert (out / "manifest.jsonl").read_bytes() == before


def test_forget_cli(sg, tmp_path):
    from latent_balance.cli import main
    from latent_balance.forget import load_person

    out = tmp_path / "person.npz"
    r = CliRunner().invoke(main, ["forget", "--seeds", str(PERSON_SEED), "--generator", "stylegan2-faces", "--out",
                                  str(out), "--probes-per-reference", "6", "--natural-probes", "0", "--threshold", "0.5",
                                  "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "radius" in r.output
    p = load_person(out, sg)
    assert p.threshold == 0.5 and p.meta["sources"]["seeds"] == [PERSON_SEED]
    for args, msg in ((["--seeds", ""], "at least one seed"), (["--seeds", "a,b"], "comma-separated integers"),
                      (["--seeds", "1", "--threshold", "-1"], "positive distance"),
                      # the library's argument names reach the CLI user as the flags
                      (["--seeds", "1", "--threshold", "calibrate", "--natural-probes", "64"], "100 natural probes (--natural-probes)")):
        r = CliRunner().invoke(main, ["forget", "--generator", "stylegan2-faces", "--out", str(tmp_path / "x.npz"),
                                      *args])
        assert r.exit_code == 2 and msg in r.output and "natural_probes" not in r.output, r.output
    r = CliRunner().invoke(main, ["sample", "--model", "stylegan2-faces", "--n", "4", "--out", str(tmp_path / "d"),
                                  "--exclude", str(tmp_path / "nope.npz")])
    assert r.exit_code == 2 and "no such person file" in r.output
    r = CliRunner().invoke(main, ["sample", "--model", "stylegan2-faces", "--n", "4", "--out", str(tmp_path / "d"),
                                  "--exclude", str(out), "--mode", "natural"])
    assert r.exit_code == 2 and "--exclude needs a sampler mode" in r.output
    assert not (tmp_path / "d").exists()


def test_an_empty_region_is_warned_about(sg, embedder):
    # threshold 0.01: below the distance of a face to its own 1 px shift (0.02-0.10, docs/forget.md), so no
    # neighbourhood probe (noise >= 0.25 natural spreads) can match and the region must come out empty
    from latent_balance.forget import make_person

    ref = sg.to_latent(sg.sample_z(np.array([PERSON_SEED]))).numpy()
    with pytest.warns(RuntimeWarning, match="radius 0"):
        p = make_person(sg, ref, threshold=0.01, probes_per_reference=6, natural_probes=0, embedder=embedder)
    assert p.radius == 0


def test_latent_only_with_images_replaces_matches(sg, sg_model, embedder):
    """Latent-only sampling with images: outputs whose image matches are replaced from the same stream (and
    relabelled); none of the returned images matches, the first rows without the exclusion did (threshold
    0.55: about half of the faces, as in the CLI test), and the same seed gives the same outputs."""
    from attributes import load_labelers
    from latent_balance import BalancedSampler

    person = _person(sg, embedder, threshold=0.55, radius=60.0)
    labs = load_labelers()
    plain = BalancedSampler(sg, sg_model, seed=2, block_size=8, labelers=labs).sample(8, images=True)
    assert person.matches(embedder(plain.images)).any()
    runs = [BalancedSampler(sg, sg_model, seed=2, block_size=8, labelers=labs, exclude=[person]).sample(8, images=True)
            for _ in range(2)]
    res = runs[0]
    assert not person.matches(embedder(res.images)).any()
    assert res.stats["exclude_images_rejected"][0] >= 1
    assert res.stats["synthesis_calls"] == 8 + res.stats["exclude_images_rejected"][0]
    # the replaced rows' labels are those of their new images
    again = {a: np.asarray(lab(res.images), np.float64) for a, lab in
             zip(("gender", "age", "smile"), [l for l in labs if l.name in ("gender", "age", "smile")])}
    for a, p in again.items():
        np.testing.assert_allclose(res.probs[a], p, atol=1e-6)
    np.testing.assert_array_equal(runs[1].seeds, res.seeds)
    torch.testing.assert_close(runs[1].images, res.images)
    # the dataset writer's path: each batch converted to uint8 once labelled and checked (batches of 3), the
    # replacements made from those checks; the same outputs as without `convert`, as the stored bytes (the
    # same batch size on both sides: on the CPU the network's float sums depend on it, so 4 of 98,304 bytes
    # differ by 1 between batches of 3 and of 8)
    from latent_balance._utils import images_to_uint8
    from latent_balance.export import _Converter

    def by3():
        return BalancedSampler(sg, sg_model, seed=2, block_size=8, batch_size=3, labelers=labs, exclude=[person])

    ref = by3().sample(8, images=True)
    np.testing.assert_array_equal(ref.seeds, res.seeds)
    s = by3()
    conv = s.sample_block(0, s.schedule(8, 0), images=True, convert=_Converter(None))
    np.testing.assert_array_equal(conv.seeds, ref.seeds)
    np.testing.assert_array_equal(conv.images, images_to_uint8(ref.images))
    assert conv.stats["exclude_images_rejected"] == ref.stats["exclude_images_rejected"]
    for a in ref.probs:
        np.testing.assert_array_equal(conv.probs[a], ref.probs[a])


def test_calibrated_threshold_bounds_the_natural_match_rate(sg, embedder):
    """threshold='calibrate': at most max_natural_match of the natural probes match (by construction: the
    threshold is the k-th smallest natural distance, k = floor(rate * n), and matching is strict), the
    threshold never exceeds dlib's 0.6, and too few natural probes for the rate are refused."""
    from latent_balance.forget import make_person

    ref = sg.to_latent(sg.sample_z(np.array([PERSON_SEED]))).numpy()
    with pytest.raises(ValueError, match="at least 50 natural probes"):
        make_person(sg, ref, threshold="calibrate", natural_probes=49, max_natural_match=0.02, embedder=embedder)
    with pytest.raises(ValueError, match="'calibrate'"):
        make_person(sg, ref, threshold="auto", embedder=embedder)
    p = make_person(sg, ref, threshold="calibrate", probes_per_reference=6, natural_probes=50, max_natural_match=0.02,
                    seed=4, embedder=embedder)
    st = p.meta["stats"]
    assert st["threshold_calibrated"] and 0 < p.threshold <= SAME_PERSON_THRESHOLD
    assert st["natural_match_rate"] <= 0.02
    ident, nat = p.probes_["identity_distance"], p.probes_["natural"]
    assert (ident[nat] < p.threshold).sum() <= 1 and (ident[~nat] < p.threshold).any()
