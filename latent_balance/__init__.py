"""latent-balance: make pretrained GANs produce balanced (or any chosen) attribute distributions.

Public API (everything else is private):

* generators: :func:`load_generator`, :class:`GeneratorAdapter`, :class:`DCGANFaces`,
  :class:`CallableGenerator`, :class:`StyleGAN2Adapter`.
"""

from .generators import (
    CallableGenerator,
    DCGANFaces,
    GeneratorAdapter,
    StyleGAN2Adapter,
    available_generators,
    load_generator,
)

__version__ = "0.1.0"

__all__ = [
    "CallableGenerator",
    "DCGANFaces",
    "GeneratorAdapter",
    "StyleGAN2Adapter",
    "available_generators",
    "load_generator",
]
