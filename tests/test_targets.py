"""Targets: resolution to cell probabilities, IPF completion of marginals, validation errors."""

import numpy as np
import pytest

from latent_balance.subgroups import CellSpace
from latent_balance.targets import Target, TargetError, ipf

SPACE = CellSpace(["gender", "age", "smile"], {"gender": ["female", "male"], "age": ["young", "old"],
                                               "smile": ["not_smiling", "smiling"]})
# natural counts with correlated attributes (order: female/male x young/old x not/smiling)
NAT = np.array([1400, 2900, 560, 480, 960, 1700, 1050, 890], dtype=float)


def test_uniform_default_and_exclusions():
    np.testing.assert_allclose(Target().resolve(SPACE, NAT), np.full(8, 1 / 8))
    np.testing.assert_allclose(Target.coerce(None).resolve(SPACE, NAT), np.full(8, 1 / 8))
    np.testing.assert_allclose(Target.coerce("uniform").resolve(SPACE, NAT), np.full(8, 1 / 8))
    q = Target({"exclude": ["male|old|smiling", {"gender": "female", "age": "old"}, "*|young|smiling"]}).resolve(SPACE, NAT)
    zero = [SPACE.index(c) for c in ("male|old|smiling", "female|old|not_smiling", "female|old|smiling",
                                     "female|young|smiling", "male|young|smiling")]
    assert np.all(q[zero] == 0)
    np.testing.assert_allclose(q[q > 0], 1 / 3)


def test_explicit_cells():
    spec = {"cells": {"female|old|smiling": 0.25, "male|young|not_smiling": 0.75}}
    q = Target(spec).resolve(SPACE, NAT)
    assert q[SPACE.index("female|old|smiling")] == 0.25 and q.sum() == pytest.approx(1)
    assert np.count_nonzero(q) == 2
    with pytest.raises(TargetError, match=r"sum to 0\.9.*normalize"):
        Target({"cells": {"female|old|smiling": 0.5, "male|old|smiling": 0.4}}).resolve(SPACE, NAT)
    q = Target({"cells": {"female|old|smiling": 0.5, "male|old|smiling": 0.4}, "normalize": True}).resolve(SPACE, NAT)
    assert q[SPACE.index("female|old|smiling")] == pytest.approx(5 / 9)
    # within the 1e-6 tolerance is accepted as is
    Target({"cells": {"female|old|smiling": 0.5, "male|old|smiling": 0.5 + 5e-7}}).resolve(SPACE, NAT)


@pytest.mark.parametrize("spec, match", [
    ({"cells": {"female|old|smiling": -0.1, "male|old|smiling": 1.1}}, "non-negative"),
    ({"cells": {"female|old|smiling": float("nan")}}, "non-negative"),
    ({"cells": {"female|old|smiling": "half"}}, "must be a number"),
    ({"cells": {"female|ancient|smiling": 1.0}}, "not a class of 'age'"),
    ({"cells": {"female|old": 1.0}}, "must name 3 classes"),
    ({"cells": {}}, "non-empty"),
    ({"marginals": {"beard": {"yes": 1.0}}}, "unknown attribute 'beard'"),
    ({"marginals": {"gender": {"woman": 1.0}}}, "unknown class 'woman'"),
    ({"marginals": {"gender": {"female": 0.6, "male": 0.6}}}, "sum to 1.2"),
    ({"uniform": ["gender", "hair"]}, "unknown attribute 'hair'"),
    ({"exclude": ["female|old|grinning"]}, "not a class of 'smile'"),
    ({"exclude": [{"eyes": "blue"}]}, "unknown attribute 'eyes'"),
    ({"exclude": ["*|*|*"]}, "empty"),
    ({"cells": {"female|old|smiling": 1.0}, "marginals": {}}, "cannot be combined"),
    ({"weights": {}}, "unknown target keys"),
    ({"attributes": ["gender", "age"]}, "the model has"),
])
def test_bad_targets(spec, match):
    with pytest.raises(TargetError, match=match):
        Target(spec).resolve(SPACE, NAT)


def test_marginals_completed_by_ipf():
    spec = {"marginals": {"gender": {"female": 0.5, "male": 0.5}, "smile": {"smiling": 0.3, "not_smiling": 0.7}}}
    q = Target(spec).resolve(SPACE, NAT)
    # (a) IPF stops when the largest marginal error is below its tol 1e-10 (targets.ipf): atol 1e-9 = 10x
    np.testing.assert_allclose(SPACE.marginal(q, "gender"), [0.5, 0.5], atol=1e-9)
    np.testing.assert_allclose(SPACE.marginal(q, "smile"), [0.7, 0.3], atol=1e-9)
    # the untargeted attribute keeps the natural conditional structure: q / natural is a product of
    # per-attribute factors (the characterization of the KL projection), checked by an additive fit
    nat = NAT / NAT.sum()
    r = np.log(q / nat).reshape(2, 2, 2)
    g, a, s = np.meshgrid(range(2), range(2), range(2), indexing="ij")
    X = np.stack([np.ones(8), g.ravel(), a.ravel(), s.ravel()], 1)
    coef, *_ = np.linalg.lstsq(X, r.ravel(), rcond=None)
    # (a) every IPF step multiplies by a factor of the targeted attributes, so the product form is exact
    # whatever the iteration count: residuals are float64 round-off of logs of O(1) values (~1e-15)
    np.testing.assert_allclose(X @ coef, r.ravel(), atol=1e-8)
    assert abs(coef[2]) < 1e-8  # age is not targeted: no age factor
    # age marginal follows the natural conditional given gender and smile
    q3, n3 = q.reshape(2, 2, 2), nat.reshape(2, 2, 2)
    # (a) exact for any product-form q (see above): round-off only
    np.testing.assert_allclose(q3 / q3.sum(1, keepdims=True), n3 / n3.sum(1, keepdims=True), atol=1e-9)


def test_uniform_over_some_attributes():
    q = Target({"uniform": ["gender", "age"]}).resolve(SPACE, NAT).reshape(2, 2, 2)
    # (a) a closed form (one scaling per (gender, age) pair): float64 round-off of 8 values, ~1e-16
    np.testing.assert_allclose(q.sum(2), np.full((2, 2), 0.25), atol=1e-12)
    n3 = NAT.reshape(2, 2, 2)
    np.testing.assert_allclose(q / q.sum(2, keepdims=True), n3 / n3.sum(2, keepdims=True), atol=1e-12)


def test_contradicting_and_unreachable_marginals():
    with pytest.raises(TargetError, match="contradict"):
        Target({"uniform": ["gender", "age"], "marginals": {"gender": {"female": 0.7, "male": 0.3}}}).resolve(SPACE, NAT)
    with pytest.raises(TargetError, match="every cell there is excluded"):
        Target({"marginals": {"gender": {"female": 0.5, "male": 0.5}},
                "exclude": [{"gender": "female"}]}).resolve(SPACE, NAT)
    # only female-old and male-young cells remain: gender female 0.7 forces old 0.7, not 0.3
    with pytest.raises(TargetError, match="did not converge"):
        Target({"marginals": {"gender": {"female": 0.7, "male": 0.3}, "age": {"young": 0.7, "old": 0.3}},
                "exclude": [{"gender": "female", "age": "young"}, {"gender": "male", "age": "old"}]}).resolve(SPACE, NAT)


def test_support_checks():
    nat = NAT.copy()
    nat[SPACE.index("male|old|smiling")] = 2
    with pytest.raises(TargetError, match=r"male\|old\|smiling \(target 0.125, 2 of"):
        Target().resolve(SPACE, nat)
    q = Target({"exclude": ["male|old|smiling"]}).resolve(SPACE, nat)
    assert q[SPACE.index("male|old|smiling")] == 0
    # marginal targets leave unsupported cells out of the completion
    q = Target({"marginals": {"gender": {"female": 0.5, "male": 0.5}}}).resolve(SPACE, nat)
    assert q[SPACE.index("male|old|smiling")] == 0
    np.testing.assert_allclose(SPACE.marginal(q, "gender"), [0.5, 0.5])
    # min_count is a parameter
    Target().resolve(SPACE, nat, min_count=2)


def test_yaml_forms(tmp_path):
    text = "marginals:\n  gender: {female: 0.5, male: 0.5}\nexclude: ['*|old|smiling']\n"
    d = {"marginals": {"gender": {"female": 0.5, "male": 0.5}}, "exclude": ["*|old|smiling"]}
    path = tmp_path / "t.yaml"
    path.write_text(text)
    ref = Target(d).resolve(SPACE, NAT)
    np.testing.assert_allclose(Target.from_yaml(text).resolve(SPACE, NAT), ref)
    np.testing.assert_allclose(Target.from_yaml(path).resolve(SPACE, NAT), ref)
    np.testing.assert_allclose(Target.coerce(str(path)).resolve(SPACE, NAT), ref)
    with pytest.raises(TargetError, match="does not exist"):
        Target.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(TargetError, match="not valid YAML"):
        Target.from_yaml("cells: {a: [1, 2\n")
    with pytest.raises(TargetError, match="mapping"):
        Target.from_yaml("- 1\n- 2\n").resolve(SPACE, NAT)


def test_ipf_reference():
    # 2x2 with known closed form: start uniform, row marginal (0.3, 0.7), column (0.6, 0.4) -> outer product
    q, ok, err = ipf(np.ones((2, 2)), [((0,), np.array([0.3, 0.7])), ((1,), np.array([0.6, 0.4]))])
    # (a) from a uniform start one sweep reaches the outer product exactly: err is round-off, under ipf's tol
    assert ok and err < 1e-10
    np.testing.assert_allclose(q, np.outer([0.3, 0.7], [0.6, 0.4]), atol=1e-12)
