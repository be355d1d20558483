"""Reuse of tensors derived from parameters and buffers (inference only), so a forward pass does not
recompute them on every call.

A StyleGAN2 forward pass recomputes many small tensors that depend only on weights: the equalized-lr
scaled weight of every fully connected layer, the demodulation matrix of every modulated convolution,
float16 copies of weights and biases, the scaled noise, the 2-D correlation taps of a resampling
filter. Each is a kernel launch (and an allocation) per layer per call; on a GPU at small batch sizes
the launches, not the arithmetic, bound the speed. :func:`derived` computes such a tensor once and
returns the stored result while its sources are unchanged.

A stored result is reused only when every source tensor is the same object (checked through a weak
reference), with the same storage (``data_ptr``), device, dtype, shape and version counter (every in-place
change, ``copy_``, ``load_state_dict``, an optimizer step, bumps ``_version``; ``module.to(...)``
replaces the storage). Nothing is stored, and the function is simply called, when:

* autograd would record the computation (grad mode on and a source requires a gradient), so training
  builds its graph as usual;
* a source is an inference tensor (``torch.inference_mode``; it has no version counter);
* a CUDA graph is being captured (kernels do not run during capture, so a stored result would be
  garbage outside the graph);
* ``torch.compile`` is tracing (the compiled graph then contains the computation), or a source is on
  the ``meta`` device (no storage).

The entry holds the sources' storages (shared, not copied), so after ``module.to(...)`` the old storages
stay allocated until the next call replaces the entries or the module is freed.

Not detected: writes through ``tensor.data`` (a separate version counter), which bypass autograd's
bookkeeping as well; call :func:`clear` after such writes. Results are bitwise those of the function:
this is reuse, not a different computation.

Off by default: ``STYLEGAN_OPS_REUSE=1`` turns it on (read at import; :data:`enabled` can be set at run
time). Two reasons: its speed gain is measured only on a CPU so far (host time per call; the GPU gain
it aims at is unmeasured), and model-editing code that writes weights through ``.data`` would get
stale results without a word. It relies on ``Tensor._version``, an attribute torch does not document.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Hashable, Sequence

import torch

__all__ = ["derived", "clear", "enabled"]

enabled: bool = os.environ.get("STYLEGAN_OPS_REUSE", "").strip().lower() in ("1", "true", "yes", "on")

# (tuple of source ids, tag) -> (weak refs to the sources, their signatures, result, the sources' storages)
_STORE: dict[tuple, tuple[tuple, tuple, object, tuple]] = {}
_LOCK = threading.RLock()  # re-entrant: a weakref callback (below) may run inside a locked section, during GC


def clear() -> None:
    """Forget every stored result."""
    with _LOCK:
        _STORE.clear()


def _signature(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t.device, t.dtype, tuple(t.shape), t._version)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def derived(sources: Sequence[torch.Tensor], tag: Hashable, fn: Callable[[], object]) -> object:
    """``fn()``, reused while the tensors in `sources` are unchanged (see the module docstring).

    Args:
        sources: the tensors ``fn`` reads (parameters, buffers); all other inputs of ``fn`` must be
                 captured in `tag`.
        tag:     hashable description of everything else the result depends on (dtype, flags, ...).
        fn:      computes the result (a tensor or a tuple of tensors) from `sources`.

    Returns:
        what ``fn()`` returns (the stored object on reuse: treat it as read-only).
    """
    if not enabled or torch.compiler.is_compiling():
        return fn()
    grad = torch.is_grad_enabled()
    for t in sources:
        if (grad and t.requires_grad) or t.is_inference() or t.device.type == "meta":
            return fn()
    if _capturing():
        return fn()
    key = (tuple(id(t) for t in sources), tag)
    sigs = tuple(_signature(t) for t in sources)
    hit = _STORE.get(key)
    if hit is not None:
        refs, old_sigs, result, _ = hit
        if old_sigs == sigs and all(r() is t for r, t in zip(refs, sources)):
            return result
    result = fn()

    def _drop(_ref, _key=key, _store=_STORE, _lock=_LOCK):  # bound now: module globals may be gone at exit
        with _lock:
            entry = _store.get(_key)
            if entry is not None and any(r is _ref for r in entry[0]):
                del _store[_key]

    refs = tuple(weakref.ref(t, _drop) for t in sources)
    # Hold the sources' storages (detach shares them: no copy), so that while the entry exists no new
    # storage can get the same address; otherwise `p.data = new` (what module.to() does) could land on
    # the old address with an unchanged version counter and look unchanged.
    keep = tuple(t.detach() for t in sources)
    with _LOCK:
        _STORE[key] = (refs, sigs, result, keep)
    return result
