"""StyleGAN2 custom ops: ``upfirdn2d`` and ``bias_act``, each a pure-PyTorch reference plus a CUDA kernel
compiled lazily on the first CUDA call (see :mod:`._build`). Importing this package builds nothing.

Usage (as in the networks)::

    from stylegan_ops.ops import upfirdn2d, bias_act
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    y = upfirdn2d.upsample2d(x, f)
    y = bias_act.bias_act(y, b, act="lrelu")

``STYLEGAN_OPS_REFERENCE=1`` forces the reference path everywhere.
"""

from . import bias_act, upfirdn2d

__all__ = ["upfirdn2d", "bias_act"]
