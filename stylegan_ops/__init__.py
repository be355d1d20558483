"""StyleGAN2 networks, custom upfirdn2d / bias_act ops (CUDA + reference), safe checkpoint loading.

Public API::

    G = stylegan_ops.load_generator("ffhq.pkl", device="cpu")   # NVIDIA .pkl, rosinality .pt or ours
    img = G(z, None, truncation_psi=0.7)                        # [N, 3, H, W] float32 in ~[-1, 1]
    ws = G.mapping(z, None)                                     # [N, num_ws, w_dim]
    img = G.synthesis(ws, noise_mode="const")
    stylegan_ops.save_generator(G, "model.pt")                  # weights_only-loadable
"""

from .checkpoints import (FORMAT_NAME, FORMAT_VERSION, CheckpointError, PersistentRecord, UnsafeCheckpointError,
                          load_generator, save_generator)
from .networks import Generator, MappingNetwork, SynthesisNetwork

from . import checkpoints as _checkpoints

__all__ = ["Generator", "MappingNetwork", "SynthesisNetwork", *_checkpoints.__all__]
