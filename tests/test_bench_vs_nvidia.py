"""bench/bench_vs_nvidia.py without NVIDIA's code: the guard that NVIDIA's side ran on its plugins, the
count of which implementation our ops ran, and the argument errors."""

import importlib.util
from pathlib import Path

import pytest
import torch

from stylegan_ops.ops import _build

from test_stylegan_networks import Z, small_G

_PATH = Path(__file__).resolve().parent.parent / "bench" / "bench_vs_nvidia.py"
_spec = importlib.util.spec_from_file_location("bench_vs_nvidia", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_guard_against_nvidia_reference_path():
    on = {"upfirdn2d": {"cuda": 6, "reference": 0}, "bias_act": {"cuda": 19, "reference": 0}}
    bench.check_nvidia_on_plugins(on, {"upfirdn2d": True, "bias_act": True}, "here")  # no error
    fell_back = {"upfirdn2d": {"cuda": 0, "reference": 6}, "bias_act": {"cuda": 19, "reference": 0}}
    with pytest.raises(bench.NvidiaNotOnPlugins, match=r"\['upfirdn2d'\].*reference path"):
        bench.check_nvidia_on_plugins(fell_back, {"upfirdn2d": True, "bias_act": True}, "here")
    with pytest.raises(bench.NvidiaNotOnPlugins, match=r"\['bias_act'\]"):
        bench.check_nvidia_on_plugins(on, {"upfirdn2d": True, "bias_act": False}, "here")


def test_counts_which_implementation_our_ops_ran():
    G = small_G(res=8)
    orig = _build.use_cuda
    with torch.no_grad(), bench.count_ours() as counts:
        G(torch.randn(2, Z), None)
    assert _build.use_cuda is orig
    # 8 px: b4 (conv1, torgb) + b8 (conv0, conv1, torgb) bias_act, 2 mapping fc layers with lrelu;
    # upfirdn2d: the up=2 convolution's filter and the image upsampling of b8. All on the reference path (CPU).
    assert dict(counts) == {"bias_act": {"cuda": 0, "reference": 7}, "upfirdn2d": {"cuda": 0, "reference": 2}}


def test_argument_errors(tmp_path):
    assert bench._parse_cases("256x8,1024x32") == [(256, 8), (1024, 32)]
    with pytest.raises(SystemExit, match="RESxBATCH"):
        bench._parse_cases("256")
    with pytest.raises(SystemExit, match="power of two"):
        bench._parse_cases("100x2")
    with pytest.raises(SystemExit, match="not a stylegan2-ada-pytorch checkout"):
        bench.import_nvidia(tmp_path)
