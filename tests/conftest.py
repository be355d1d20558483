import os

import pytest
import torch

# Two CPU cores in CI: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(scope="session")
def dcgan():
    from latent_balance import DCGANFaces

    return DCGANFaces(device="cpu")
