"""The multi-class and geometry labelers: age_group, expression, skin_tone, head_pose.

References are independent of the code under test: the age model's own 81-way distribution summed
with explicit per-age loops, the smile labeler's emotion output, published CIELAB values of sRGB
colours, and synthetic images whose colour / geometry is known by construction.
"""

import numpy as np
import torch
import pytest
import yaml

from attributes import get_labeler, label_images, load_labelers
from attributes.fixtures.make_fixture import as_images, load_fixture


@pytest.fixture(scope="module")
def images():
    faces, _ = load_fixture()
    return as_images(faces)


# -- age_group --------------------------------------------------------------------------------------
def test_age_group_sums_the_age_distribution_over_bins(images):
    ag = get_labeler("age_group")
    assert ag.classes == ("0-19", "20-39", "40-59", "60+")
    p = ag(images)
    dist = get_labeler("age").age_distribution(images)
    ages = get_labeler("age").ages
    # independent reference: each of the 81 ages put in its group by explicit comparisons
    ref = np.zeros((len(images), 4))
    for k, a in enumerate(ages):
        g = 0 if a < 20 else 1 if a < 40 else 2 if a < 60 else 3
        ref[:, g] += dist[:, k]
    np.testing.assert_allclose(p, ref, atol=1e-12)
    # the fixture's faces span more than one group (the labeler is not constant)
    assert len(set(p.argmax(1))) >= 2


def test_age_group_edges_from_yaml_and_ids(tmp_path, images):
    spec = tmp_path / "labelers.yaml"
    spec.write_text(yaml.safe_dump({"labelers": [
        {"name": "age_group", "classes": ["0-29", "30-49", "50+"], "options": {"edges": [30, 50]}},
        {"name": "expression"}]}))
    ag, ex = load_labelers(spec)
    assert ag.classes == ("0-29", "30-49", "50+")
    default = get_labeler("age_group")
    # ids name the bins, so probe sets made with other bins are never mixed with these
    assert ag.id != default.id and "groups30,50" in ag.id and "groups20,40,60" in default.id
    assert ag.id != get_labeler("age").id
    out = label_images([ag, ex], images, batch_size=7)
    np.testing.assert_allclose(out["age_group"], ag(images), atol=1e-12)
    np.testing.assert_allclose(out["expression"], ex(images), atol=1e-12)


@pytest.mark.parametrize("edges, msg", [([40, 20], "strictly increasing"), ([20.5], "whole ages"),
                                        ([0], r"\[1, 80\]"), ([20, 90], r"\[1, 80\]"), ([], "at least one"),
                                        ("abc", "whole ages")])
def test_age_group_bad_edges_are_refused(edges, msg):
    with pytest.raises(ValueError, match=msg):
        get_labeler("age_group", edges=edges)


def test_age_group_unknown_option_is_refused():
    with pytest.raises(TypeError, match="unknown option"):
        get_labeler("age_group", threshold=30)


# -- expression -------------------------------------------------------------------------------------
def test_expression_is_the_seven_emotions_of_the_smile_network(images):
    ex = get_labeler("expression")
    assert ex.classes == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    p = ex(images)
    smile = get_labeler("smile")
    # the labeler protocol renormalizes the float32 softmax rows to sum to 1 in float64: a relative
    # change of at most a few float32 ulps (~1e-7), hence 1e-6
    np.testing.assert_allclose(p, smile.emotions(images), atol=1e-6, rtol=0)
    np.testing.assert_allclose(p[:, 3], smile(images)[:, 1], atol=1e-6, rtol=0)
    assert len(set(p.argmax(1))) >= 3
    # batch independence (the network runs fixed micro-batches)
    np.testing.assert_array_equal(ex(images[5:9]), p[5:9])
    assert ex.id.startswith("expression:") and ex.id != smile.id


# -- skin_tone --------------------------------------------------------------------------------------
def test_srgb_to_lab_matches_published_values():
    from attributes.skin import srgb_to_lab

    # CIE L*a*b* (D65, 2 degree) of the sRGB primaries and greys as published in Bruce Lindbloom's
    # colour calculator / the sRGB literature. Our matrix is IEC 61966-2-1's 4-decimal one, the
    # published values come from the matrix derived from the chromaticities: they differ by ~1e-4
    # relative in XYZ, i.e. up to ~0.03 in L*a*b*; 0.06 allows twice that.
    rgb = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.5]])
    ref = np.array([[53.2408, 80.0925, 67.2032], [87.7347, -86.1827, 83.1793], [32.2970, 79.1875, -107.8602],
                    [100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.3890, 0.0, 0.0]])
    np.testing.assert_allclose(srgb_to_lab(rgb), ref, atol=0.06, rtol=0)
    # every grey is exactly neutral (a* = b* = 0), and L* rises with the grey level
    grey = srgb_to_lab(np.repeat(np.linspace(0, 1, 11)[:, None], 3, axis=1))
    np.testing.assert_allclose(grey[:, 1:], 0, atol=1e-9)
    assert np.all(np.diff(grey[:, 0]) > 0)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        srgb_to_lab(np.zeros((4, 2)))


def test_ita_categories_follow_del_bino_bounds():
    from attributes.skin import ITA_CATEGORIES, ita_category, ita_degrees

    ita = np.array([80, 55.01, 55, 41.01, 41, 28.01, 28, 10.01, 10, -29.99, -30, -80, np.nan])
    names = [ITA_CATEGORIES[i] if i >= 0 else None for i in ita_category(ita)]
    assert names == ["very_light", "very_light", "light", "light", "intermediate", "intermediate", "tan", "tan",
                     "brown", "brown", "dark", "dark", None]
    # ITA = arctan((L* - 50) / b*): L* = 50 + b* gives exactly 45 degrees; L* < 50 gives negative angles
    assert ita_degrees(70.0, 20.0) == pytest.approx(45.0)
    assert ita_degrees(40.0, 10.0) == pytest.approx(-45.0)


def test_skin_tone_reads_exactly_the_patch_pixels(images):
    from attributes.faces import FaceAligner
    from attributes.skin import ITA_CATEGORIES, SkinToneLabeler, _patch_mask, ita_category, ita_degrees, srgb_to_lab

    # fixed_crop: the landmarks are the mean landmarks whatever the content, so painting does not move them
    lab = SkinToneLabeler(aligner=FaceAligner(fixed_crop=True))
    pts, _ = lab.aligner.landmarks(images[:4])
    mask = _patch_mask(pts, 64, 64)
    assert mask[0].sum() > 50 and (mask == mask[0]).all()
    skin, other = np.array([224, 172, 140]), np.array([40, 90, 200])  # a light skin colour (ITA 45.6); blue elsewhere
    u8 = np.where(mask[..., None], skin, other).astype(np.float32)
    x = torch.from_numpy(u8).permute(0, 3, 1, 2) / 127.5 - 1
    L, _, b = srgb_to_lab(skin / 255.0)
    np.testing.assert_allclose(lab.ita(x), ita_degrees(L, b), atol=1e-9)
    p = lab(x)
    assert (p.argmax(1) == ita_category(ita_degrees(L, b))).all() and ITA_CATEGORIES[p[0].argmax()] == "light"
    # the median ignores a minority of outliers inside the patches (e.g. a strand of hair)
    u8[0][mask[0] & (np.cumsum(mask[0]).reshape(64, 64) % 5 == 0)] = [20, 10, 5]
    x = torch.from_numpy(u8).permute(0, 3, 1, 2) / 127.5 - 1
    np.testing.assert_allclose(lab.ita(x)[0], ita_degrees(L, b), atol=1e-9)


def test_skin_tone_on_faces_ids_and_darker_images(images):
    from attributes.faces import FaceAligner
    from attributes.skin import SkinToneLabeler

    lab = get_labeler("skin_tone")
    p = lab(images)
    assert p.shape == (24, 6) and set(np.unique(p)) <= {0.0, 1.0}
    assert len(set(p.argmax(1))) >= 3  # the fixture's faces are not all one tone
    assert lab.id.startswith("skin_tone:") and lab.aligner.id in lab.id
    # darkening every face (bytes times 0.7) lowers L* (and scales b*), so the ITA of every face drops:
    # with L* < 50 the angle moves towards -90 as |b*| shrinks too. Fixed landmarks (fixed_crop), so
    # that the patches stay where they were.
    fixed = SkinToneLabeler(aligner=FaceAligner(fixed_crop=True))
    # (only where b* > 0, |ITA| < 90: with a blue cast, b* < 0, the angle lies beyond -90 and rises instead)
    ita, darker = fixed.ita(images), fixed.ita((images + 1) * 0.7 - 1)
    yellow = np.abs(ita) < 90
    assert yellow.sum() >= 20 and (darker[yellow] < ita[yellow]).all()


# -- head_pose --------------------------------------------------------------------------------------
def _project_head(yaw_deg, roll_deg, depth, scale=40.0, shift=(30.0, 20.0)):
    """dlib 5-point landmarks of a symmetric 3D head (eye corners at z=0, nose base `depth` eye-centre
    distances in front), turned by `yaw_deg` about the vertical axis, projected orthographically and
    then rolled in the image plane. Units: eye-centre distance 1 (image x right, y down, z to camera)."""
    pts3 = np.array([[0.72, 0, -0.1], [0.28, 0, 0.1],      # image-right eye: outer, inner corner (centre x=0.5)
                     [-0.72, 0, -0.1], [-0.28, 0, 0.1],    # image-left eye
                     [0.0, 0.8, depth]])                   # nose base, on the symmetry plane
    t = np.radians(yaw_deg)
    x = pts3[:, 0] * np.cos(t) + pts3[:, 2] * np.sin(t)    # rotation about y, orthographic projection
    y = pts3[:, 1]
    c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
    return np.stack([c * x - s * y, s * x + c * y], axis=1) * scale + np.array(shift)


def test_yaw_from_landmarks_recovers_the_projected_angle():
    from attributes.pose import yaw_from_landmarks

    # eye corners at depths -0.1 / +0.1 average to 0, so the eye centres sit at depth 0 as the model assumes
    for depth in (0.3, 0.4):
        for yaw in (-50, -20, -5, 0, 12, 35):
            for roll in (-20, 0, 15):
                got = yaw_from_landmarks(_project_head(yaw, roll, depth)[None], depth=depth)[0]
                assert got == pytest.approx(yaw, abs=1e-9)
    # the yaw sign does not depend on the depth constant; the size of the angle does
    p = _project_head(20, 0, 0.4)[None]
    assert yaw_from_landmarks(p, 0.3)[0] > yaw_from_landmarks(p, 0.4)[0] > 0
    with pytest.raises(ValueError, match=r"\[N, 5, 2\]"):
        yaw_from_landmarks(np.zeros((3, 68, 2)))


def test_head_pose_classes_thresholds_and_mirror(images, tmp_path):
    (hp,) = load_labelers({"labelers": [{"name": "head_pose", "classes": ["frontal", "turned_left", "turned_right"],
                                         "options": {"threshold": 15}}]})
    yaw = hp.yaw(images)
    p = hp(images)
    expect = np.where(np.abs(yaw) <= 15, 0, np.where(yaw > 0, 2, 1))
    np.testing.assert_array_equal(p.argmax(1), expect)
    assert set(expect) == {0, 1, 2}  # the fixture has frontal and both turned directions
    # a mirrored face is turned the other way: it may become frontal (landmark noise), but a face
    # turned left must never be called turned left again in the mirror image
    pm = hp(images.flip(-1)).argmax(1)
    assert not np.any((expect == 1) & (pm == 1)) and not np.any((expect == 2) & (pm == 2))
    assert np.corrcoef(yaw, hp.yaw(images.flip(-1)))[0, 1] < -0.8
    wide = get_labeler("head_pose", threshold=30)
    assert wide.id != hp.id and (wide(images).argmax(1) == 0).sum() >= (expect == 0).sum()
    for bad in (0, 90, -5):
        with pytest.raises(ValueError, match=r"threshold must be a yaw in degrees in \(0, 90\)"):
            get_labeler("head_pose", threshold=bad)
