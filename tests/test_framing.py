"""Framing calibration (issue 13, item 6): face labelers fitted to where a generator puts the face.

Without FFHQ: the packaged 64 px faces are re-framed to an FFHQ-like framing (``_reframe.py``: face box
scaled into FFHQ's relative box, border by reflection) at 256 and 1024 px by a CallableGenerator.
``bench/bench_framing.py`` measures the same on 400 faces per generator and size
(``bench/results/framing_cpu.json``); the bounds below are derived from those figures.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from _reframe import FFHQ_FACE_BOX, reframed_generator
from attributes import FunctionLabeler, get_labeler, label_images, load_labelers
from attributes.faces import DCGAN_FACE_BOX
from attributes.framing import FramingError, calibrate_framing, has_default_framing, reframe_labelers
from latent_balance import CallableGenerator, build_probes, load_generator
from latent_balance.framing import frame_labelers, framing_calibration
from latent_balance.probes import ProbeFileError

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def labs():
    return load_labelers()  # gender, age, smile with their packaged (DCGAN) framing


@pytest.fixture(scope="module")
def framed256(dcgan):
    return reframed_generator(dcgan, 256)


def _close(box, ref, tol):
    return max(abs(a - b) for a, b in zip(box, ref)) <= tol


def test_packaged_generators_keep_their_framing_and_labels(dcgan, labs, monkeypatch):
    import attributes.framing as fr
    from latent_balance.generators import _packaged_model_path
    from latent_balance.subgroups import SubgroupModel

    monkeypatch.setattr(fr, "calibrate_framing", lambda *a, **k: pytest.fail("a packaged generator was calibrated"))
    for gen in (dcgan, load_generator("stylegan2-faces", device="cpu")):
        assert all(a is b for a, b in zip(frame_labelers(gen, labs), labs))
    # the shipped model was fitted with exactly these labeler ids (their framing and preprocessing)
    model = SubgroupModel.load(_packaged_model_path("stylegan2-faces"))
    for lab in labs:
        assert model.meta_["labelers"][lab.name]["id"] == lab.id


def test_calibration_gives_back_the_packaged_box(dcgan):
    cal = calibrate_framing(dcgan.generate(np.arange(128)))
    # The box implied by landmarks is DCGAN_FACE_BOX by construction of MEAN_LANDMARKS, up to (a) the
    # landmark shift between detector boxes and the fixed box (0.23 px of 64 = 0.004) and (b) the
    # median's noise: per-coordinate IQR ~0.04 over faces (sd ~0.03), ~90 detections, so the median's
    # sd is ~1.25 * 0.03 / sqrt(90) = 0.004; 0.02 is 4 sd beyond (a) (bench, 256 faces: 0.009 at most).
    assert _close(cal.face_box, DCGAN_FACE_BOX, 0.02), cal
    # the detector finds ~72% of these faces (docs/labelers.md; 74% on 256 in the bench); 95% band for 128
    assert 0.55 <= cal.detection_rate <= 0.9 and cal.plausible_share >= 0.9


def test_calibration_finds_the_new_framing_and_records_it(framed256, labs):
    cal = framing_calibration(framed256)
    assert cal.n_images == 256 and cal.detection_rate >= 0.5
    # the re-framing maps DCGAN_FACE_BOX exactly onto FFHQ_FACE_BOX, so the same 0.02 as above (scaled
    # by 0.61 / 0.75 it is even looser)
    assert _close(cal.face_box, FFHQ_FACE_BOX, 0.02), cal
    framed = frame_labelers(framed256, labs)
    assert framed is not labs and not any(has_default_framing(lab) for lab in framed)
    box = "box" + ",".join(f"{v:g}" for v in cal.face_box)
    for old, new in zip(labs, framed):
        assert new.name == old.name and new.id != old.id
    assert box in framed[0].id and box in framed[1].id and framed[0].aligner is framed[1].aligner
    assert "crop" in framed[2].id and framed[2].crop[0] < cal.face_box[0]
    # the calibration is cached per generator: the same labelers again, no new work
    assert [lab.id for lab in frame_labelers(framed256, labs)] == [lab.id for lab in framed]
    # labelers without a face box, or given one explicitly, are left alone
    own = FunctionLabeler("light", ["dark", "light"], lambda x: torch.stack([0 * x.mean((1, 2, 3)) + 0.5] * 2, 1))
    explicit = get_labeler("gender", face_box=(0.2, 0.3, 0.8, 0.9))
    out = frame_labelers(framed256, [own, explicit])
    assert out[0] is own and out[1] is explicit


@pytest.mark.slow
@pytest.mark.parametrize("size", [256, 1024])
def test_reframed_labels_agree_with_native_labels(dcgan, labs, size):
    gen = reframed_generator(dcgan, size)
    seeds = np.arange(20000, 20120)
    native = label_images(labs, dcgan.generate(seeds))
    images = gen.generate(seeds)
    calibrated = label_images(frame_labelers(gen, labs), images)
    uncalibrated = label_images(labs, images)
    agree = {a: float(np.mean(native[a].argmax(1) == calibrated[a].argmax(1))) for a in native}
    before = {a: float(np.mean(native[a].argmax(1) == uncalibrated[a].argmax(1))) for a in native}
    # Bench (docs/labelers.md, 400 other dcgan-faces per size): calibrated agreement 0.93 to 0.97 per
    # attribute at 256 and 1024 px, uncalibrated 0.865 to 0.908.
    # The 95% is not asserted for gender and age: bench/bench_framing_controls.py shows it is
    # bounded by the reference, not the framing. The native labels themselves change on 3.0% (gender)
    # and 4.5% (age) of 400 dcgan faces when only the rounding of their work image changes (bytes
    # differ by <= 1), and the native chips reach ~4.5 px past the 64 px image (95% of faces), where the native
    # reference sees edge replication and the re-framed faces a reflection: padding the native faces by
    # reflection alone changes 5.5% of gender labels. Against native labels with a reflected border the
    # re-framed ones (FFHQ's box exactly) agree on 95.2-96.5% at 256 and 1024 px, both packaged
    # generators (docs/labelers.md, "Where the rest of the disagreement comes from").
    # Per attribute: at a true agreement of 0.93, 120 faces show <= 101 agreeing (< 0.85) with
    # probability 2e-4 (binomial: mean 111.6, sd 2.8; 101.5 is 3.6 sd below), so >= 0.85; labels cut
    # from a lost face agree at chance (~0.5-0.6).
    assert all(v >= 0.85 for v in agree.values()), (agree, before)
    # The framing itself: the mean over the three attributes must beat the uncalibrated mean by 0.025.
    # Bench gap 0.063 (256 px and 1024 px); over 120 faces the gap's sd is ~0.015 (per face, the three paired differences,
    # each discordant on ~8% of faces), so 0.025 lies > 2 sd below it, and the packaged box (gap 0:
    # the calibration not applied) fails.
    assert np.mean(list(agree.values())) - np.mean(list(before.values())) >= 0.025, (agree, before)


def test_images_that_are_not_framed_faces_are_refused(tmp_path):
    def blobs(lat):  # smooth colour blobs, a deterministic function of the latent: no faces
        return torch.nn.functional.interpolate(torch.tanh(lat.view(-1, 3, 4, 4)), size=(64, 64), mode="bilinear",
                                               align_corners=False)

    gen = CallableGenerator(blobs, z_dim=48, id="blobs", device="cpu")
    path = tmp_path / "p.npz"
    with pytest.raises(FramingError, match=r"do not look like framed faces.*found a face in \d+ of 256"):
        build_probes(gen, [get_labeler("smile")], n=4, path=path)
    assert not path.exists()
    # a labeler that needs no face box works on them as before
    light = FunctionLabeler("light", ["dark", "light"], lambda x: torch.stack([torch.sigmoid(-x.mean((1, 2, 3))),
                                                                                torch.sigmoid(x.mean((1, 2, 3)))], 1))
    assert len(build_probes(gen, [light], n=4, path=path)) == 4


def test_probes_made_under_another_framing_are_refused(framed256, labs, tmp_path):
    path = tmp_path / "p.npz"
    ps = build_probes(framed256, labs, n=4, path=path)  # framed automatically
    assert ps.meta["labelers"]["gender"]["id"] == frame_labelers(framed256, labs)[0].id
    other = reframe_labelers(labs, (0.2, 0.3, 0.8, 0.9))
    with pytest.raises(ProbeFileError, match="gender.*use another probe file"):
        build_probes(framed256, other, n=6, path=path)


def _invoke(*args):
    from latent_balance.cli import main

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_cli_pipeline_on_a_reframed_256px_generator(tmp_path, monkeypatch):
    import latent_balance.generators as generators

    def factory(device=None, **kwargs):
        return reframed_generator(load_generator("stylegan2-faces", device="cpu", **kwargs), 256)

    monkeypatch.setitem(generators._BUILTINS, "ffhq-framed-256", factory)
    gen = ["--generator", "ffhq-framed-256", "--device", "cpu"]
    r = _invoke("probe", *gen, "--attributes", "gender,smile", "--n", 200, "--out", tmp_path / "p.npz")
    assert r.exit_code == 0, r.output
    ids = json.loads(_invoke("info", tmp_path / "p.npz").output)["labelers"]
    box = "box" + ",".join(f"{v:g}" for v in framing_calibration(factory()).face_box)
    assert box in ids["gender"]["id"] and box != "box" + ",".join(f"{v:g}" for v in DCGAN_FACE_BOX)
    assert _invoke("fit", "--probes", tmp_path / "p.npz", "--out", tmp_path / "m.npz", "--attributes",
                   "gender").exit_code == 0
    r = _invoke("sample", *gen, "--model", tmp_path / "m.npz", "--n", 8, "--out", tmp_path / "ds", "--verify",
                "--attributes", "gender", "--block-size", 4)
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "ds" / "settings.json").read_text())
    assert settings["labelers"]["gender"] == ids["gender"]["id"]
    r = _invoke("audit", tmp_path / "ds", "--natural-n", 8, "--no-image-metrics")
    assert r.exit_code == 0, r.output


def test_every_builtin_face_labeler_is_reframed():
    """Each built-in labeler places faces with the packaged framing (aligner box or smile crop), so each
    is rebuilt for another box: a new id naming it, and the labeler it was copied from unchanged."""
    import attributes
    from attributes.framing import has_default_framing, reframe_labelers

    labs = attributes.load_labelers(attributes.available_labelers())
    before = {lab.name: lab.id for lab in labs}
    crops = {lab.name: tuple(lab.crop) for lab in labs if hasattr(lab, "crop")}
    new = reframe_labelers(labs, FFHQ_FACE_BOX)
    for old, lab in zip(labs, new):
        assert has_default_framing(old), old.name
        assert lab.id != before[old.name], (old.name, lab.id)
        assert old.id == before[old.name]
        if old.name in crops:
            assert tuple(old.crop) == crops[old.name] and tuple(lab.crop) != crops[old.name]
