import json
import warnings

import numpy as np
import pytest

from latent_balance.audit import audit_labels, cell_names, label_cells
from latent_balance.report import contact_sheet, write_report

CLASSES = {"gender": ("female", "male"), "smile": ("no", "yes"), "glasses": ("no", "yes")}


def _onehot(idx, k):
    out = np.zeros((len(idx), k))
    out[np.arange(len(idx)), idx] = 1
    return out


def test_cells_and_labels():
    names = cell_names(CLASSES, ["gender", "smile"])
    assert names == ["female|no", "female|yes", "male|no", "male|yes"]
    probs = {"gender": _onehot([0, 1, 1], 2), "smile": _onehot([1, 0, 1], 2)}
    np.testing.assert_array_equal(label_cells(probs, CLASSES, ["gender", "smile"]), [1, 2, 3])
    with pytest.raises(ValueError, match="no labels"):
        label_cells(probs, CLASSES, ["glasses"])


def test_audit_labels_counts_marginals_drift():
    rng = np.random.default_rng(0)
    n = 400
    g = np.repeat([0, 1], n // 2)
    s = np.tile([0, 1], n // 2)
    gl = (rng.random(n) < 0.3).astype(int)
    probs = {"gender": _onehot(g, 2), "smile": _onehot(s, 2), "glasses": _onehot(gl, 2)}
    nat = {"gender": _onehot((rng.random(n) < 0.7).astype(int), 2), "smile": _onehot((rng.random(n) < 0.2).astype(int), 2),
           "glasses": _onehot((rng.random(n) < 0.1).astype(int), 2)}
    target = {c: 0.25 for c in cell_names(CLASSES, ["gender", "smile"])}
    a = audit_labels(probs, CLASSES, target, ["gender", "smile"], natural_probs=nat, n_sim=200)
    assert a["n"] == n and a["achieved"]["kl"] == pytest.approx(0) and a["achieved"]["tv"] == pytest.approx(0)
    # (b) natural cells (0.24, 0.06, 0.56, 0.14) vs uniform: TV 0.31; the estimate from 400 draws has sd
    # ~0.02, so 0.2 is > 5 sd below (0.29-0.355 over seeds 0-10)
    assert a["natural"]["tv"] > 0.2
    assert a["marginals"]["gender"]["counts"] == [200, 200]
    d = a["drift"]["glasses"]
    assert d["difference"][1] == pytest.approx(d["achieved"][1] - d["natural"][1])
    # 0.3 vs 0.1 clearly drifted. (b) The difference has sd sqrt((0.21 + 0.09) / 400) = 0.027, so its 95% low
    # end is 0.2 - 1.96 * 0.027 = 0.146 on average and falls below 0 with probability Phi(-5.3) ~ 6e-8
    # (0.08 here, 0.08-0.18 over seeds 0-10)
    assert d["low"][1] < d["difference"][1] < d["high"][1] and d["low"][1] > 0
    json.dumps(a)
    with pytest.raises(ValueError, match="unknown cells"):
        audit_labels(probs, CLASSES, {"female|maybe": 1.0}, ["gender", "smile"])


def test_contact_sheet_and_report(tmp_path):
    from PIL import Image
    import io

    imgs = np.linspace(-1, 1, 5 * 3 * 8 * 8).reshape(5, 3, 8, 8).astype(np.float32)
    png = contact_sheet(imgs, ncol=4, pad=2)
    im = Image.open(io.BytesIO(png))
    assert im.size == (4 * 10 + 2, 2 * 10 + 2)
    probs = {"gender": _onehot([0, 0, 1, 1], 2), "smile": _onehot([0, 1, 0, 1], 2)}
    a = audit_labels(probs, CLASSES, {"female|no": 0.5, "male|yes": 0.5}, ["gender", "smile"], n_sim=50)
    path = write_report(a, tmp_path / "r", sheets={"female|no": png}, settings={"seed": 1})
    page = path.read_text()
    assert "<svg" in page and "data:image/png;base64," in page and "worst-cell ratio" in page
    assert (tmp_path / "r" / "contact_sheets" / "female__no.png").read_bytes() == png
    assert json.loads((tmp_path / "r" / "audit.json").read_text())["n"] == 4


def test_image_metrics_of_images_held_as_bytes_equal_the_float_ones():
    """audit_dataset holds the dataset's and the natural images as uint8 (U8Images, 3.1 GB instead of 12.6 GB
    per 1,000 images at 1024 px): every per-cell measure equals the one on the same images as float."""
    from latent_balance._utils import U8Images
    from latent_balance.audit import image_metrics_per_cell

    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    f = u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    cells = np.arange(32) % 4  # 4 images per cell a side (2 per half: the noise floor's stderr is NaN)
    names = cell_names(CLASSES, ["gender", "smile"])
    held = U8Images(u8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Frechet distance on 16 images (only for "_all"): biased, said
        want = image_metrics_per_cell(f[:16], cells[:16], f[16:], cells[16:], names, max_pairs=10, show_progress=False)
        got = image_metrics_per_cell(held.take(np.arange(16)), cells[:16], held.take(np.arange(16, 32)), cells[16:],
                                     names, max_pairs=10, show_progress=False)
    np.testing.assert_equal(got, want)  # exactly, NaN where the float path has NaN
    assert got["female|no"]["lpips_ratio_stderr"] is not None


def test_audit_json_is_standard_json_for_excluded_cells_and_two_image_cells(tmp_path):
    """Issue 20.3: an excluded cell with images put a bare Infinity (KL) into audit.json, and cells of 2
    images a NaN (LPIPS jackknife standard error). Now null with the reason beside it, strict JSON."""
    from _strict import check_json_files, strict_json

    from latent_balance.audit import image_metrics_per_cell

    probs = {"gender": _onehot([0, 0, 1, 1], 2), "smile": _onehot([0, 1, 0, 1], 2)}
    a = audit_labels(probs, CLASSES, {"female|no": 0.5, "male|yes": 0.5}, ["gender", "smile"], natural_probs=probs,
                     n_sim=50)
    assert a["achieved"]["kl"] == float("inf")
    rng = np.random.default_rng(0)
    imgs = rng.uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    cells = np.array([0, 0, 3, 3])
    with warnings.catch_warnings():  # the jackknife warning is shown once per process (warn_once)
        warnings.simplefilter("ignore")
        a["images"] = image_metrics_per_cell(imgs, cells, imgs, cells, cell_names(CLASSES, ["gender", "smile"]))
    assert np.isnan(a["images"]["female|no"]["lpips_stderr"])
    write_report(a, tmp_path / "r")
    assert check_json_files(tmp_path / "r") == 1
    out = strict_json((tmp_path / "r" / "audit.json").read_text())
    assert out["achieved"]["kl"] is None and "excluded" in out["achieved"]["kl_reason"]
    row = out["images"]["female|no"]
    assert row["lpips_stderr"] is None and "at least 3 images" in row["lpips_stderr_reason"]
    assert row["lpips"] == pytest.approx(a["images"]["female|no"]["lpips"])
    # a cell without images: every null carries its reason
    empty = out["images"]["female|yes"]
    for key in ("lpips", "lpips_stderr", "lpips_natural", "lpips_ratio", "frechet_vgg16"):
        assert empty[key] is None and empty[f"{key}_reason"], (key, empty)
