"""Forgetting a person on a conditional generator sampled over its classes (issue 18 x issue 13).

Over several classes the modelled latent is ``[w, onehot(class)]``; the synthesis reads only w, so a
person (its face) is a property of w: its latents and region are in W, and a person made under one class
setting of a checkpoint is excluded under any other (docs/forget.md, "Conditional generators").

The checkpoint: test_class_axis.py's tiny network makes noise images, which the identity model refuses
(no face), so forgetting needs a conditional generator of faces. `cond_faces` writes one with the same
writer (``stylegan_ops.save_generator``): the packaged ``stylegan2-faces`` networks with a 4-class label
embedding fed into the mapping's first layer (its z columns rescaled so that w of a given z is unchanged
up to the class's contribution). The class moves w by 16-22 between class means (the median distance of
two natural w is 144): a class changes the face a little, as in a real conditional model, and every
class still gives framed faces (the framing calibration finds faces in 82-87% of each setting's images).
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_balance import load_generator
from test_class_axis import SPEC_WARM, G, K, _invoke  # noqa: F401 - G: the tiny conditional network (fixture)

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

PERSON_SEED = 12  # test_forget.py's person seed; not chosen by result
THRESHOLD = 0.5
EMBED = 8  # label-embedding features of the test checkpoint


@pytest.fixture(scope="module")
def cond_faces(tmp_path_factory):
    """A K-class conditional StyleGAN2 of faces (module docstring), written with our checkpoint writer."""
    import stylegan_ops
    from stylegan_ops import Generator, save_generator

    from latent_balance.generators import _MODELS_DIR

    P = stylegan_ops.load_generator(_MODELS_DIR / "stylegan2_faces.pt", device="cpu")
    kw = dict(P.init_kwargs, c_dim=K)
    kw["mapping_kwargs"] = dict(kw["mapping_kwargs"], embed_features=EMBED)
    C = Generator(**kw).eval()
    src, own = P.state_dict(), C.state_dict()
    g = torch.Generator().manual_seed(0)
    gain = np.sqrt((P.z_dim + EMBED) / P.z_dim)  # fc0's weight gain is 1/sqrt(inputs): keep z's contribution
    for k, v in own.items():
        if k == "mapping.fc0.weight":
            w = torch.empty_like(v)
            w[:, :P.z_dim] = src[k] * gain
            w[:, P.z_dim:] = torch.randn(v.shape[0], EMBED, generator=g) * src[k].std() * gain
            own[k] = w
        elif k.startswith("mapping.embed"):
            own[k] = torch.randn(v.shape, generator=g)
        else:
            own[k] = src[k]
    C.load_state_dict(own)
    path = tmp_path_factory.mktemp("condfaces") / "cond_faces.pt"
    save_generator(C, path)
    return path


@pytest.fixture(scope="module")
def gen_all(cond_faces):
    return load_generator(cond_faces, device="cpu", classes="all")


@pytest.fixture(scope="module")
def gen_one(cond_faces):
    return load_generator(cond_faces, device="cpu", class_index=1)


@pytest.fixture(scope="module")
def persons(gen_all, gen_one, face_embedder):
    """The person of seed PERSON_SEED made over all classes, and on class 1 alone (6 neighbourhood probes, no
    natural ones: the tests need no region statistics)."""
    from latent_balance.forget import person_from_seeds

    kw = dict(probes_per_reference=6, natural_probes=0, threshold=THRESHOLD, seed=0, embedder=face_embedder)
    return person_from_seeds(gen_all, [PERSON_SEED], **kw), person_from_seeds(gen_one, [PERSON_SEED], **kw)


def _with_class(gen, w, k):
    """Latents [N, latent_dim] of `gen` (over several classes): w [N, w_dim] with class k's one-hot block."""
    return np.concatenate([w, np.eye(len(gen.classes), dtype=np.float32)[[gen.classes.index(k)] * len(w)]], axis=1)


def test_person_over_classes_lives_in_w(gen_all, persons):
    """Item 1 (API): a person made over all classes has its latents and region in W, the seed's class recorded;
    the region test reads w alone (the same w is the same face under every class block)."""
    from latent_balance.forget import Exclusion

    p_all, _ = persons
    z = gen_all.sample_z([PERSON_SEED])
    full = gen_all.to_latent(z).numpy()
    w_dim = gen_all.w_dim
    assert p_all.latents.shape == (1, w_dim)
    np.testing.assert_array_equal(p_all.latents, full[:, :w_dim])
    assert p_all.meta["sources"] == {"seeds": [PERSON_SEED], "classes": gen_all.classes_of(z).tolist()}
    # the nearest neighbourhood probes (0.25 natural spreads) matched, so the region is not empty
    assert p_all.radius > 0
    ex = Exclusion(gen_all, [p_all])
    # a latent whose w lies just inside the radius is inside under every class block; with the class
    # block in the distance, a block other than the person's would add sqrt(2) and put it outside
    u = np.random.default_rng(0).standard_normal(w_dim)
    w = (p_all.latents[0] + u / np.linalg.norm(u) * p_all.radius * (1 - 1e-4)).astype(np.float32)[None]
    lat = np.concatenate([_with_class(gen_all, w, k) for k in gen_all.classes])
    assert ex.inside(lat).all()
    far = (p_all.latents[0] + u / np.linalg.norm(u) * p_all.radius * 1.01).astype(np.float32)[None]
    assert not ex.inside(_with_class(gen_all, far, 0)).any()
    # the image check: the person's w rendered under any class block is the person
    imgs = gen_all.synthesize(torch.from_numpy(np.concatenate([_with_class(gen_all, p_all.latents, k)
                                                                 for k in gen_all.classes])))
    assert ex.matches(imgs).all()


def test_old_person_file_with_the_class_block_is_read_in_w(gen_all, persons, tmp_path):
    """A person file written before this fix holds [w, onehot] latents: read back in W."""
    from latent_balance.forget import Person, load_person, save_person

    p_all, _ = persons
    old = Person(p_all.embeddings, _with_class(gen_all, p_all.latents, 2), p_all.threshold, p_all.radius,
                 p_all.meta)
    save_person(old, tmp_path / "old.npz")
    q = load_person(tmp_path / "old.npz", gen_all)
    np.testing.assert_array_equal(q.latents, p_all.latents)


def test_person_works_across_class_settings(gen_all, gen_one, persons, face_embedder):
    """Item 2 (API): a person made on class 1 alone excludes the person over all classes, and one made over all
    classes excludes it on class 1: the latent filter compares w, the image check face embeddings."""
    from latent_balance.forget import Exclusion

    p_all, p_one = persons
    assert p_one.latents.shape == p_all.latents.shape == (1, gen_all.w_dim)
    for gen, person in ((gen_all, p_one), (gen_one, p_all)):
        ex = Exclusion(gen, [person])
        w = person.latents
        lat = np.concatenate([_with_class(gen, w, k) for k in gen.classes]) if gen is gen_all else w
        assert ex.inside(lat).all()
        # the person's own image, made under the other setting, is found by the image check
        img = gen.synthesize(torch.from_numpy(lat))
        assert ex.matches(img).all()
    # Each class setting calibrates its own framing on its own images: on this checkpoint class 1's face
    # box and all classes' differ by about 0.003 (< FACE_BOX_TOLERANCE, the calibration's precision), so
    # the class-1 person is checked with an embedder framed as the person was, not refused
    from latent_balance.framing import FACE_BOX_TOLERANCE, generator_face_box

    b_all, b_one = np.array(generator_face_box(gen_all)), np.array(generator_face_box(gen_one))
    assert 0 < np.abs(b_all - b_one).max() <= FACE_BOX_TOLERANCE
    ex = Exclusion(gen_all, [p_one, p_all])
    assert ex._embedders[0].id == p_one.embedder_id != ex.embedder.id and ex._embedders[1] is ex.embedder


def test_what_still_refuses_a_person(gen_all, cond_faces, persons, G):  # noqa: F811
    """Refused before any work, with what differs and what to do: another checkpoint (test_class_axis's tiny
    network), another truncation of the same checkpoint, a face box beyond the calibration's precision."""
    from latent_balance import StyleGAN2Adapter
    from latent_balance.forget import Exclusion, Person, PersonFileError, check_person

    _, p_one = persons
    with pytest.raises(PersonFileError, match=r"another generator.*id.*class settings, not compared.*forget"):
        check_person(p_one, StyleGAN2Adapter(G, classes="all", device="cpu"))
    trunc = load_generator(cond_faces, device="cpu", classes="all", truncation_psi=0.7)
    with pytest.raises(PersonFileError, match=r"truncation_psi: 1\.0 vs 0\.7") as err:
        check_person(p_one, trunc)
    assert "file --class 1, this one --classes 0,1,2,3" in str(err.value)
    eid = p_one.embedder_id
    box = eid.split(":box")[1].split(":")[0]
    far = ",".join(f"{float(v) + 0.05:g}" for v in box.split(","))
    moved = Person(p_one.embeddings, p_one.latents, p_one.threshold, p_one.radius,
                   dict(p_one.meta, embedder=eid.replace(box, far)), name="moved")
    with pytest.raises(PersonFileError, match=r"0\.05\d apart, more than the 0\.01.*made with --class 1; this run "
                                              r"uses --classes 0,1,2,3"):
        Exclusion(gen_all, [moved])


def test_project_refuses_a_class_axis(G):  # noqa: F811
    """Item 3 (API): the projector cannot pick a class for a [w, onehot] latent: a clear refusal naming the fix."""
    from latent_balance import StyleGAN2Adapter
    from latent_balance.projector import project

    gen = StyleGAN2Adapter(G, classes="all", device="cpu")
    with pytest.raises(ValueError, match="several classes.*class_index=K"):
        project(gen, torch.zeros(1, 3, 32, 32), steps=1)
    one = gen._one_class(2)
    assert one.latent_dim == gen.w_dim and one.id == gen.id.replace(":classes=0,1,2,3", ":class=2")
    w = gen.to_latent(gen.sample_z(np.arange(3)))
    torch.testing.assert_close(one.synthesize(w[:, :gen.w_dim]), gen.synthesize(w), rtol=0, atol=0)


def test_cli_forget_and_sample_over_classes(cond_faces, gen_all, tmp_path):
    """Items 1-3 through the CLI: `forget --seeds` with --classes all and with --class 1, and `forget --photos`
    with --classes all, each excluded by `sample --classes all --exclude` (verified: no written image
    matches, no saved latent's w is inside a region)."""
    from PIL import Image

    from latent_balance.forget import Exclusion, load_person
    from test_forget import _written_images
    from test_frame_faces import photo_of

    (tmp_path / "warm.yaml").write_text(SPEC_WARM)
    labs = ["--labelers", tmp_path / "warm.yaml", "--device", "cpu"]
    common = ["--generator", cond_faces, "--probes-per-reference", 6, "--natural-probes", 0, "--threshold", THRESHOLD,
              "--device", "cpu", "--quiet"]
    files = {}
    for name, extra in (("all", ["--classes", "all"]), ("one", ["--class", 1])):
        files[name] = tmp_path / f"p_{name}.npz"
        r = _invoke("forget", "--seeds", PERSON_SEED, "--out", files[name], *common, *extra)
        assert r.exit_code == 0, r.output
    # a photo of the person's face (seed 12 over all classes), projected into W with a few steps
    photos = tmp_path / "photos"
    photos.mkdir()
    face = gen_all.generate([PERSON_SEED])[0]
    Image.fromarray(photo_of(face, np.random.default_rng(5))).save(photos / "a.png")
    files["photo"] = tmp_path / "p_photo.npz"
    r = _invoke("forget", "--photos", photos, "--steps", 10, "--out", files["photo"], *common, "--classes", "all")
    assert r.exit_code == 0, r.output
    photo_person = load_person(files["photo"], gen_all)
    assert photo_person.latents.shape == (1, gen_all.w_dim)
    assert photo_person.meta["projection"]["generator"].endswith(":class=0")
    # the model the sampler needs (test_class_axis's recipe: class x warm, 1200 probes)
    r = _invoke("probe", "--generator", cond_faces, *labs, "--n", 1200, "--out", tmp_path / "probes.npz",
                "--classes", "all", "--quiet")
    assert r.exit_code == 0, r.output
    assert _invoke("fit", "--probes", tmp_path / "probes.npz", "--out", tmp_path / "m.npz", "--attributes",
                   "class,warm").exit_code == 0
    out = tmp_path / "ds"
    r = _invoke("sample", "--generator", cond_faces, "--model", tmp_path / "m.npz", "--n", 8, "--block-size", 8, *labs,
                "--attributes", "warm", "--verify", "--classes", "all", "--encode-workers", 0, "--save-latents",
                "--out", out, *[a for f in files.values() for a in ("--exclude", f)])
    assert r.exit_code == 0, r.output
    ex = Exclusion(gen_all, [str(f) for f in files.values()])
    assert not ex.matches(_written_images(out)).any()
    lat = np.load(out / "latents.npy")
    assert lat.shape == (8, gen_all.latent_dim) and not ex.inside(lat).any()
    card = json.loads((out / "dataset_card.json").read_text())
    assert len(card["forget"]["persons"]) == 3
    assert sum(p["latent_rejected"] for p in card["forget"]["persons"]) > 0  # the filter ran on [w, onehot]
