"""The multi-class and geometry labelers: age_group, expression, skin_tone, head_pose.

References are independent of the code under test: the age model's own 81-way distribution summed
with explicit per-age loops, the smile labeler's emotion output, published CIELAB values of sRGB
colours, and synthetic images whose colour / geometry is known by construction.
"""

import numpy as np
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
