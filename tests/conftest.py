import os

import pytest
import torch

# Two CPU cores in CI: keep torch from oversubscribing them. pytest.ini runs the suite in pytest-xdist
# workers (one per core, at most 4): the cores are shared out between them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(scope="session")
def dcgan():
    from latent_balance import DCGANFaces

    return DCGANFaces(device="cpu")


@pytest.fixture(scope="session")
def sg2_faces():
    """The packaged 64 px StyleGAN2 (``stylegan2-faces``) on the CPU."""
    from latent_balance import load_generator

    return load_generator("stylegan2-faces", device="cpu")


@pytest.fixture(scope="session")
def noisy():
    """The *noisy* synthetic world of tests/_synthetic.py (logistic label noise 0.15 latent units) and a
    SubgroupModel fitted on 20,000 of its probes (tests/test_sampler.py, tests/test_cell_cap.py)."""
    from _synthetic import SyntheticWorld, build_world_probes

    from latent_balance.subgroups import SubgroupModel

    w = SyntheticWorld(tau=0.15, seed=5)
    return w, SubgroupModel().fit(build_world_probes(w, 20000))


@pytest.fixture(scope="session")
def face_embedder():
    """dlib's face-recognition network behind :class:`attributes.identity.FaceEmbedder`."""
    from attributes.identity import FaceEmbedder

    return FaceEmbedder()
