"""Fast image-statistics labelers for the CLI tests, loaded through a YAML spec (``function:`` entries).

They are real labelers (deterministic functions of the image), just cheap: brightness and warmth of
the face GAN's images. The built-in face labelers are exercised by the demo test.
"""

import torch

# The YAML labeler spec the CLI tests pass with --labelers (the two functions below).
SPEC = """labelers:
  - name: light
    classes: [dark, light]
    function: cli_labelers:light
    id: test-light-v1
  - name: warm
    classes: [cool, warm]
    function: cli_labelers:warm
    id: test-warm-v1
"""


def light(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, 2] probabilities of (dark, light)."""
    p = torch.sigmoid(12 * (images.mean(dim=(1, 2, 3)) + 0.15))
    return torch.stack([1 - p, p], 1).double()


def warm(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, 2] probabilities of (cool, warm): red minus blue."""
    d = (images[:, 0] - images[:, 2]).mean(dim=(1, 2))
    p = torch.sigmoid(20 * (d - 0.12))
    return torch.stack([1 - p, p], 1).double()
