"""Labelers made from examples (``make-labeler``): fit, checks, file round trip, refusals, and a
user-made labeler balancing the packaged DCGAN end to end.

The examples are our own generated faces sorted by a known image property, the mean brightness: the
brightest third of 90 faces is one class, the darkest third the other (the middle third is left out,
as a user would leave out unclear examples)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from scipy.stats import binomtest

import attributes
from latent_balance import SubgroupModel, build_probes, load_generator
from latent_balance.cli import main
from latent_balance.example_labelers import ExamplesError, LabelerFileError, _features, load_labeler, make_labeler

N_FACES = 90  # 30 per class: above the default minimum of 10, 6 per fold with 5 folds


def _save(img: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def faces():
    G = load_generator("dcgan-faces")
    x = G.generate(np.arange(N_FACES))
    return G, x, x.mean(dim=(1, 2, 3)).numpy()


@pytest.fixture(scope="module")
def examples(tmp_path_factory, faces):
    _, x, bright = faces
    root = tmp_path_factory.mktemp("examples")
    order = np.argsort(bright)
    third = N_FACES // 3
    for i in order[:third]:
        _save(x[i], root / "dark" / f"{i}.png")
    for i in order[-third:]:
        _save(x[i], root / "bright" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def made(examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "lighting.labeler"
    return make_labeler(examples, "lighting", out=out, framing="as-is"), out  # generated images: already framed


def test_make_labeler_cross_validates_and_round_trips(made, faces, examples):
    lab, out = made
    assert lab.classes == ("bright", "dark") and lab.name == "lighting"
    r = lab.report
    assert r["counts"] == {"bright": 30, "dark": 30} and r["n_images"] == 60 and r["folds"] == 5
    conf = np.array(r["confusion"])
    assert conf.sum(axis=1).tolist() == [30, 30]  # rows: true class
    assert r["cv_accuracy"] == pytest.approx(np.trace(conf) / 60)
    # brightness extremes are easy for early VGG stages; the refusal threshold (binomial test vs 0.5 at
    # 1%) needs 39/60; require clearly more than that
    assert r["cv_accuracy"] >= 0.85 and r["binomial_p"] < 1e-6
    again = load_labeler(out)
    assert again.id == lab.id and again.classes == lab.classes and again.report == r
    imgs = torch.cat([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32)).permute(2, 0, 1)[None]
                      for p in sorted((examples / "bright").glob("*.png"))[:8]]) / 127.5 - 1
    np.testing.assert_array_equal(again(imgs), lab(imgs))
    # the file's id names the features and framing; equal ids mean equal classifiers
    assert lab.id.startswith("example:lighting@") and "vgg16-lpips-gap5" in lab.id


def test_probabilities_match_sklearn(made, examples):
    """Our closed-form predict equals scikit-learn's predict_proba for the same fit (an independent
    implementation of the standardisation and the logistic link)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    lab, _ = made
    files = sorted((examples / "bright").glob("*.png")) + sorted((examples / "dark").glob("*.png"))
    x = torch.cat([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32)).permute(2, 0, 1)[None]
                   for p in files]) / 127.5 - 1
    y = np.array([0] * 30 + [1] * 30)
    feats = _features(x, 64)
    scaler = StandardScaler().fit(feats)
    clf = LogisticRegression(C=0.1, max_iter=5000).fit(scaler.transform(feats), y)
    np.testing.assert_allclose(lab.predict_features(feats), clf.predict_proba(scaler.transform(feats)), atol=1e-9)
    # a multi-class labeler uses the softmax: three classes from the same images
    three = {"a": files[:20], "b": files[20:40], "c": files[40:]}
    feats3 = np.concatenate([feats[:20], feats[20:40], feats[40:]])
    y3 = np.repeat([0, 1, 2], 20)
    s3 = StandardScaler().fit(feats3)
    c3 = LogisticRegression(C=0.1, max_iter=5000).fit(s3.transform(feats3), y3)
    from latent_balance.example_labelers import ExampleLabeler

    lab3 = ExampleLabeler("x", list(three), 64, s3.mean_, s3.scale_, c3.coef_, c3.intercept_, {})
    np.testing.assert_allclose(lab3.predict_features(feats3), c3.predict_proba(s3.transform(feats3)), atol=1e-9)


def test_labeler_files_in_specs_and_by_name(made, tmp_path):
    lab, out = made
    spec = tmp_path / "labelers.yaml"
    (tmp_path / "lighting.labeler").write_bytes(out.read_bytes())
    spec.write_text(yaml.safe_dump({"labelers": ["gender", {"name": "lighting", "classes": ["bright", "dark"],
                                                            "path": "lighting.labeler"}]}))
    gender, light = attributes.load_labelers(spec)  # relative path: from the YAML file's folder
    assert light.id == lab.id and gender.name == "gender"
    assert attributes.get_labeler(str(out)).id == lab.id
    assert attributes.load_labelers([str(out)])[0].id == lab.id
    spec.write_text(yaml.safe_dump({"labelers": [{"name": "glasses", "path": "lighting.labeler"}]}))
    with pytest.raises(ValueError, match="holds a labeler named 'lighting', the spec says 'glasses'"):
        attributes.load_labelers(spec)
    with pytest.raises(FileNotFoundError, match="labeler file .*missing.labeler not found"):
        attributes.load_labelers([{"name": "x", "path": str(tmp_path / "missing.labeler")}])
    bad = tmp_path / "bad.labeler"
    bad.write_bytes(b"not a zip")
    with pytest.raises(LabelerFileError, match="corrupt or not a latent-balance labeler"):
        load_labeler(bad)


def _folder(root: Path, spec: dict, x: torch.Tensor) -> Path:
    k = 0
    for cls, n in spec.items():
        for _ in range(n):
            _save(x[k % len(x)], root / cls / f"{k}.png")
            k += 1
    return root


def test_bad_examples_folders_are_refused(tmp_path, faces):
    _, x, _ = faces
    with pytest.raises(ExamplesError, match="does not exist or is not a folder"):
        make_labeler(tmp_path / "nope", "a")
    with pytest.raises(ExamplesError, match=r"1 class folder\(s\) \(only\); expected at least two"):
        make_labeler(_folder(tmp_path / "one", {"only": 12}, x), "a", framing="as-is")
    loose = _folder(tmp_path / "loose", {"a": 12, "b": 12}, x)
    _save(x[0], loose / "stray.png")
    with pytest.raises(ExamplesError, match="holds images directly .*stray.png.*one sub-folder per class"):
        make_labeler(loose, "a", framing="as-is")
    with pytest.raises(ExamplesError, match="too few examples: 'b' has 4 image.*at least 10"):
        make_labeler(_folder(tmp_path / "few", {"a": 12, "b": 4}, x), "a")  # refused before any framing
    broken = _folder(tmp_path / "broken", {"a": 12, "b": 12}, x)
    (broken / "b" / "zz.png").write_bytes(b"garbage")
    with pytest.raises(ExamplesError, match="cannot read image .*zz.png"):
        make_labeler(broken, "a", framing="as-is")
    with pytest.raises(ValueError, match="name must be"):
        make_labeler(broken, "a|b")


def test_chance_accuracy_is_refused(tmp_path, faces):
    """Faces split at random into two classes carry no signal: the cross-validated accuracy is at
    the majority rate and the binomial test refuses the labeler (nothing is written)."""
    _, x, _ = faces
    perm = np.random.default_rng(0).permutation(N_FACES)[:48]
    root = tmp_path / "random"
    for j, i in enumerate(perm):
        _save(x[i], root / ("a" if j % 2 else "b") / f"{i}.png")
    out = tmp_path / "random.labeler"
    with pytest.raises(ExamplesError, match="not above the majority-class rate 0.500"):
        make_labeler(root, "random", out=out, framing="as-is")
    assert not out.exists()


def test_cli_make_labeler_prints_report_and_refuses_bad_folders(examples, tmp_path):
    out = tmp_path / "lighting.labeler"
    res = CliRunner().invoke(main, ["make-labeler", "--examples", str(examples), "--name", "lighting", "--out", str(out),
                                    "--framing", "as-is"])
    assert res.exit_code == 0, res.output
    assert "cross-validated accuracy" in res.output and "confusion matrix" in res.output and out.exists()
    assert "framing: as-is (centre crop, resized to 64 px)" in res.output
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0 and '"kind": "labeler"' in info.output and '"confusion"' in info.output
    res = CliRunner().invoke(main, ["make-labeler", "--examples", str(tmp_path / "none"), "--name", "x",
                                    "--out", str(tmp_path / "x.labeler")])
    assert res.exit_code == 2 and "does not exist or is not a folder" in res.output
    res = CliRunner().invoke(main, ["make-labeler", "--examples", str(examples), "--name", "x", "--out",
                                    str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "must end in .labeler" in res.output
    res = CliRunner().invoke(main, ["make-labeler", "--examples", str(examples), "--name", "x", "--out",
                                    str(tmp_path / "x.labeler"), "--framing", "as-is", "--skip-no-face"])
    assert res.exit_code == 2 and "apply to --framing detect only" in res.output


def test_user_made_labeler_balances_the_dcgan(made, faces):
    """End to end: probes labelled by the user-made labeler, the subgroup model, and latent-only
    sampling toward a skewed target move the labelled share of 'bright' faces significantly."""
    from latent_balance import BalancedSampler

    G = faces[0]
    lab, _ = made
    probes = build_probes(G, [lab], 400, start=1000, show_progress=False)
    assert probes.meta["labelers"]["lighting"]["id"] == lab.id
    natural = float(np.mean(probes.labels("lighting") == 0))
    model = SubgroupModel().fit(probes)
    target = {"marginals": {"lighting": {"bright": 0.9, "dark": 0.1}}}
    s = BalancedSampler(G, model, target, verify=False, seed=3)
    res = s.sample(120, images=True)
    got = lab(res.images).argmax(1) == 0
    k = int(got.sum())
    # the latent-only sampler must raise the labelled share of 'bright' above the natural share: a
    # one-sided binomial test against the natural rate at the 1% level (brightness is only partly
    # linear in the DCGAN's Z with 400 probes, so latent-only gets part of the way: 76/120 = 0.63
    # against a natural 0.49 on this seed, p = 0.0013)
    assert binomtest(k, 120, natural, alternative="greater").pvalue < 0.01, (k, natural)
    # ... and the verified sampler gets the target's counts exactly (every kept image labelled)
    sv = BalancedSampler(G, model, {"marginals": {"lighting": {"bright": 0.75, "dark": 0.25}}}, verify=True,
                         labelers=[lab], seed=4, max_synthesis_per_image=30)
    rv = sv.sample(24, images=True)
    assert (lab(rv.images).argmax(1) == 0).sum() == 18


def test_cli_attributes_take_a_labeler_file(made):
    """``--attributes gender,lighting.labeler`` (as probe/sample/audit parse it) loads the file."""
    from latent_balance.cli import _labelers

    lab, out = made
    gender, light = _labelers(f"gender,{out}", None)
    assert gender.name == "gender" and light.id == lab.id


# -- examples that are photos: framed by face detection (make-labeler --framing detect) ---------------
def _photo(face: torch.Tensor, rng) -> np.ndarray:
    """`face` pasted into a bigger random photo: scale 2-3.5, rotation up to 8 degrees, random offset."""
    from test_frame_faces import photo_of

    return photo_of(face, rng, scale=(2.0, 3.5), max_angle=8.0, canvas=(1.3, 2.0))


@pytest.fixture(scope="module")
def photo_examples(tmp_path_factory, faces):
    """The same brightest / darkest thirds as `examples`, each face pasted into a bigger photo."""
    _, x, bright = faces
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(11)
    order = np.argsort(bright)
    third = N_FACES // 3
    for cls, idx in (("dark", order[:third]), ("bright", order[-third:])):
        for i in idx:
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_photo(x[i], rng)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def made_photos(photo_examples, tmp_path_factory):
    """A labeler made by the CLI from the photos, framed into the DCGAN's face box by detection."""
    out = tmp_path_factory.mktemp("lab_photos") / "lighting.labeler"
    res = CliRunner().invoke(main, ["make-labeler", "--examples", str(photo_examples), "--name", "lighting", "--out",
                                    str(out), "--generator", "dcgan-faces", "--skip-no-face"])
    assert res.exit_code == 0, res.output
    return load_labeler(out), res.output


@pytest.mark.slow
def test_photo_examples_are_framed_by_detection(made_photos, faces):
    lab, output = made_photos
    fr = lab.report["framing"]
    skipped = sum(len(v) for v in fr["skipped_no_face"].values())
    assert fr["mode"] == "detect" and fr["face_box"] == [0.125, 0.25, 0.875, 1.0] and fr["size"] == 64
    assert fr["generator"].startswith("dcgan-faces")
    # dlib's detector finds 75% of these faces at 64 px and 91% of those again in such photos
    # (bench/results/frame_faces_cpu.json): ~68%, 41 of 60 expected (sd 3.6); 3 sd below that is 30
    assert fr["framed_by_detection"] + skipped == 60 and fr["framed_by_detection"] >= 30
    assert fr["framed_by_detection"] == lab.report["n_images"] == sum(lab.report["counts"].values())
    assert f"framing: {fr['framed_by_detection']} examples framed by face detection into face box " \
           f"(0.125, 0.25, 0.875, 1.0) at 64 px (dcgan-faces" in output
    assert lab.framed_face_box == (0.125, 0.25, 0.875, 1.0) and "|faces-box0.125,0.25,0.875,1-64px|" in lab.id
    # cross-validated on the framed photos as the centre-cropped generated faces are (>= 0.85, above)
    assert lab.report["cv_accuracy"] >= 0.85
    # the generator's own images (not re-framed: only resized) get the classes of the faces the photos
    # were made from: at least as the refusal threshold demands of a labeler (binomial test vs 0.5 at 1%)
    _, x, bright = faces
    order = np.argsort(bright)
    idx = np.concatenate([order[:30], order[-30:]])
    truth = np.r_[np.ones(30, int), np.zeros(30, int)]  # classes ("bright", "dark"): dark = 1
    k = int((lab(x[idx]).argmax(1) == truth).sum())
    print(f"photo-made labeler on the generated faces: {k}/60 right; counts {lab.report['counts']}, "
          f"cv {lab.report['cv_accuracy']:.3f}")
    assert binomtest(k, 60, 0.5, alternative="greater").pvalue < 0.01, k


@pytest.mark.slow
def test_photo_labeler_balances_the_dcgan(made_photos, faces):
    """End to end, as test_user_made_labeler_balances_the_dcgan, with the labeler made from photos."""
    from latent_balance import BalancedSampler

    G = faces[0]
    lab, _ = made_photos
    probes = build_probes(G, [lab], 400, start=1000, show_progress=False)
    assert probes.meta["labelers"]["lighting"]["id"] == lab.id
    # the target favours the class the generator makes less often (90%): the direction with room to move
    # (the photo-made labeler calls more of the DCGAN's faces bright than the as-is one: 0.67 vs 0.49)
    rare = int(np.mean(probes.labels("lighting") == 1) < 0.5)
    natural = float(np.mean(probes.labels("lighting") == rare))
    model = SubgroupModel().fit(probes)
    target = {c: (0.9 if j == rare else 0.1) for j, c in enumerate(lab.classes)}
    s = BalancedSampler(G, model, {"marginals": {"lighting": target}}, verify=False, seed=3)
    res = s.sample(120, images=True)
    k = int((lab(res.images).argmax(1) == rare).sum())
    print(f"photo-made labeler end to end: {lab.classes[rare]} {k}/120 against a natural {natural:.3f}")
    # as in the test above: the labelled share of that class rises above its natural share (one-sided
    # binomial test at 1%)
    assert binomtest(k, 120, natural, alternative="greater").pvalue < 0.01, (k, natural, lab.classes[rare])


def test_framed_labeler_refuses_a_generator_with_another_framing(made, faces, tmp_path):
    """A labeler whose examples were framed into one face box refuses a generator that puts its faces
    elsewhere (it cannot be re-framed: it labels the generator's images as they are)."""
    from attributes.framing import FramingError
    from latent_balance.example_labelers import ExampleLabeler
    from latent_balance.framing import FACE_BOX_TOLERANCE, frame_labelers

    G = faces[0]
    as_is, _ = made
    assert as_is.framed_face_box is None and frame_labelers(G, [as_is]) == [as_is]  # nothing to check
    lab = ExampleLabeler(as_is.name, as_is.classes, 64, as_is._mean, as_is._scale, as_is._coef, as_is._intercept, {},
                         framed_face_box=(0.125, 0.25, 0.875, 1.0))
    assert lab.id != as_is.id and "|faces-box0.125,0.25,0.875,1-64px|" in lab.id
    assert frame_labelers(G, [lab]) == [lab]
    ffhq = (0.195, 0.290, 0.805, 0.900)  # tests/_reframe.py's FFHQ box
    other = ExampleLabeler(lab.name, lab.classes, 64, lab._mean, lab._scale, lab._coef, lab._intercept, {},
                           framed_face_box=ffhq)
    assert other.id != lab.id and "faces-box0.195,0.29,0.805,0.9-64px" in other.id
    with pytest.raises(FramingError, match=r"framed with the face in box \(0.195, 0.29, 0.805, 0.9\), but generator "
                                           r"dcgan-faces.* puts its faces in \(0.125, 0.25, 0.875, 1.0\).*--generator"):
        frame_labelers(G, [other])
    with pytest.raises(FramingError, match="framed with the face in box"):
        build_probes(G, [other], 8, show_progress=False)
    near = ExampleLabeler(lab.name, lab.classes, 64, lab._mean, lab._scale, lab._coef, lab._intercept, {},
                          framed_face_box=(0.125 + FACE_BOX_TOLERANCE / 2, 0.25, 0.875, 1.0))
    assert frame_labelers(G, [near]) == [near]
    # the framing is part of the file's id: a file whose recorded box was edited is refused
    import zipfile

    out = tmp_path / "edited.labeler"
    lab.save(out)
    again = load_labeler(out)
    assert again.id == lab.id and again.framed_face_box == lab.framed_face_box
    with zipfile.ZipFile(out) as z:
        members = {n: z.read(n) for n in z.namelist()}
    key = next(n for n in members if members[n].count(b'"face_box": [0.125, 0.25, 0.875, 1.0]'))
    members[key] = members[key].replace(b'"face_box": [0.125, 0.25, 0.875, 1.0]', b'"face_box": [0.195, 0.29, 0.805, 0.9]', 1)
    with zipfile.ZipFile(out, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(LabelerFileError, match="does not match the classifier"):
        load_labeler(out)


@pytest.mark.slow
def test_examples_without_faces_are_refused_by_name(tmp_path, faces):
    _, x, _ = faces
    rng = np.random.default_rng(5)
    root = tmp_path / "nofaces"
    for j in range(4):
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "b").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(x[j], rng)).save(root / "a" / f"{j}.png")
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(root / "b" / f"{j}.png")
    out = tmp_path / "x.labeler"
    with pytest.raises(ExamplesError, match=r"example\(s\) have no usable face to frame \(.*'b': 4\).*b/0.png.*"
                                            r"--skip-no-face.*--framing as-is"):
        make_labeler(root, "x", out=out, min_per_class=3)
    with pytest.raises(ExamplesError, match=r"too few examples with a usable face after skipping: .*'b' has 0 of 4"):
        make_labeler(root, "x", out=out, min_per_class=3, skip_no_face=True)
    assert not out.exists()
    with pytest.raises(ValueError, match="apply to framing='detect' only"):
        make_labeler(root, "x", framing="as-is", skip_no_face=True)
    with pytest.raises(ValueError, match="either face_box or generator"):
        make_labeler(root, "x", face_box=(0.1, 0.2, 0.9, 1.0), generator=faces[0])
