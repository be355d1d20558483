import numpy as np
import pytest
import torch

from latent_balance import CallableGenerator, StyleGAN2Adapter, load_generator
from latent_balance.seeds import check_seeds, stream_seeds, z_from_seeds


def test_z_from_seeds_is_per_seed():
    a = z_from_seeds([3, 7, 11], 100)
    b = z_from_seeds([11, 3], 100)
    assert a.shape == (3, 100) and a.dtype == np.float32
    np.testing.assert_array_equal(a[0], b[1])
    np.testing.assert_array_equal(a[2], b[0])
    np.testing.assert_array_equal(a[0], np.random.default_rng(3).standard_normal(100).astype(np.float32))


def test_fast_seeding_equals_one_default_rng_per_seed():
    """The vectorized SeedSequence + PCG64 seeding path against the definition, across word boundaries."""
    from latent_balance import seeds as seeds_mod

    rng = np.random.default_rng(123)
    s = np.concatenate([np.arange(0, 300), rng.integers(0, 2**32, 300), rng.integers(2**32, 2**63 - 1, 300),
                        stream_seeds(5, 3, 0, 100), stream_seeds(2**20 - 1, 2**12 - 1, 2**30 - 50, 50),
                        stream_seeds(7, 5000, 0, 50), stream_seeds(2**20 - 1, 2**12 + 2**20 - 1, 2**21 - 50, 50),
                        [2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1]]).astype(np.int64)
    ref = np.stack([np.random.default_rng(int(x)).standard_normal(100) for x in s]).astype(np.float32)
    np.testing.assert_array_equal(seeds_mod._z_fast(s, 100), ref)
    for x in (0, 1, 2**32, 2**63 - 1):
        np.testing.assert_array_equal(seeds_mod._seed_sequence_state(np.array([x], np.int64))[0],
                                      np.random.SeedSequence(x).generate_state(4, np.uint64))
    assert seeds_mod._fast_path_ok()
    short = np.stack([np.random.default_rng(int(x)).standard_normal(7) for x in s[:50]]).astype(np.float32)
    np.testing.assert_array_equal(z_from_seeds(s[:50], 7), short)


def test_seed_validation():
    with pytest.raises(ValueError, match="non-negative"):
        check_seeds([-1, 2])
    with pytest.raises(ValueError, match="integers"):
        check_seeds([0.5])
    with pytest.raises(ValueError, match="1-D"):
        check_seeds(np.zeros((2, 2), dtype=int))


def test_stream_layout_extension():
    """Issue 19: streams past the first 2**12 of a user seed start at 3 * 2**61, after the original layout's
    last seed (2**62 + 2**30 - 1), hold 2**21 seeds each and end at the int64 maximum."""
    from latent_balance.seeds import TOTAL_STREAMS, stream_length

    last_original = stream_seeds(2**20 - 1, 2**12 - 1, 2**30 - 1, 1)[0]
    assert last_original == 2**62 + 2**30 - 1
    first_extra = stream_seeds(0, 2**12, 0, 1)[0]
    assert first_extra == 3 * 2**61 > last_original
    assert stream_seeds(2**20 - 1, TOTAL_STREAMS - 1, 2**21 - 1, 1)[0] == 2**63 - 1
    # consecutive further streams and user seeds tile the region without gaps or overlaps
    assert stream_seeds(3, 2**12 + 1, 0, 1)[0] - stream_seeds(3, 2**12, 0, 1)[0] == 2**21
    assert stream_seeds(4, 2**12, 0, 1)[0] - stream_seeds(3, TOTAL_STREAMS - 1, 0, 1)[0] == 2**21
    assert stream_length(2**12 - 1) == 2**30 and stream_length(2**12) == 2**21
    with pytest.raises(ValueError, match="out of range"):
        stream_seeds(0, 2**12, 2**21 - 5, 6)
    with pytest.raises(ValueError, match="out of range"):
        stream_seeds(0, TOTAL_STREAMS, 0, 1)


def test_plain_stream_layout():
    """Verify's plain-generator streams (one per user seed and block, 2**20 seeds) lie between the original
    streams' last seed and the further streams' first, tile their region without overlaps, and have
    z's bit-identical to one default_rng per seed (the fast seeding path) at its edges."""
    from latent_balance.seeds import PLAIN_STREAM_LENGTH, TOTAL_STREAMS, plain_stream_seeds

    last_original = stream_seeds(2**20 - 1, 2**12 - 1, 2**30 - 1, 1)[0]
    first_extra = stream_seeds(0, 2**12, 0, 1)[0]
    first = plain_stream_seeds(0, 0, 0, 1)[0]
    last = plain_stream_seeds(2**20 - 1, TOTAL_STREAMS - 1, PLAIN_STREAM_LENGTH - 1, 1)[0]
    assert last_original < first and last < first_extra
    assert plain_stream_seeds(3, 8, 0, 1)[0] - plain_stream_seeds(3, 7, 0, 1)[0] == PLAIN_STREAM_LENGTH
    assert plain_stream_seeds(4, 0, 0, 1)[0] - plain_stream_seeds(3, TOTAL_STREAMS - 1, 0, 1)[0] == PLAIN_STREAM_LENGTH
    np.testing.assert_array_equal(np.diff(plain_stream_seeds(2, 5, 10, 100)), 1)
    for bad in ((0, 0, PLAIN_STREAM_LENGTH - 5, 6), (0, TOTAL_STREAMS, 0, 1), (2**20, 0, 0, 1), (0, -1, 0, 1)):
        with pytest.raises(ValueError):
            plain_stream_seeds(*bad)
    edge = np.array([first, last, plain_stream_seeds(7, 99, 12345, 1)[0]], np.int64)
    ref = np.stack([np.random.default_rng(int(x)).standard_normal(16) for x in edge]).astype(np.float32)
    np.testing.assert_array_equal(z_from_seeds(edge, 16), ref)


def test_stream_seeds_disjoint():
    a = stream_seeds(0, 0, 0, 10)
    b = stream_seeds(0, 1, 0, 10)
    c = stream_seeds(1, 0, 0, 10)
    assert a.min() >= 2**30
    assert not (set(a) & set(b)) and not (set(a) & set(c)) and not (set(b) & set(c))


def test_dcgan_same_seed_same_images(dcgan):
    x1 = dcgan.generate([0, 1, 2, 3])
    x2 = dcgan.generate([2, 3])
    assert x1.shape == (4, 3, 64, 64) and x1.dtype == torch.float32
    assert x1.min() >= -1 and x1.max() <= 1
    torch.testing.assert_close(x1[2:], x2, rtol=0, atol=1e-6)  # (a) batch size: a few float32 ulp of |x| <= 1
    # different seeds differ: mean |difference| >= 0.28 over 20 other seed pairs, 0.05 is 5x under
    assert (x1[0] - x1[1]).abs().mean() > 0.05
    assert not x1.requires_grad


def test_dcgan_batch_independent(dcgan):
    dcgan_small = type(dcgan)(device="cpu", batch_size=3)
    # (a) float32 rounding only (measured 0 on CPU); 1e-5 = 80 ulp of |x| <= 1 for other BLAS blockings
    torch.testing.assert_close(dcgan.generate(range(7)), dcgan_small.generate(range(7)), rtol=0, atol=1e-5)


def test_dcgan_bad_latent(dcgan):
    with pytest.raises(ValueError, match=r"\[N, 100\]"):
        dcgan.synthesize(torch.zeros(2, 99))
    assert dcgan.to_latent(torch.zeros(0, 100)).shape == (0, 100)


def test_dcgan_grad_on_request(dcgan):
    z = dcgan.sample_z([5]).requires_grad_(True)
    img = dcgan.synthesize(z, grad=True)
    img.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_callable_generator():
    proj = torch.nn.Linear(8, 3 * 4 * 4)

    def synth(latent):
        return torch.tanh(proj(latent)).view(-1, 3, 4, 4)

    g = CallableGenerator(synth, z_dim=8, id="toy")
    assert g.img_resolution == 4 and g.latent_space == "z"
    x = g.generate([1, 2])
    assert x.shape == (2, 3, 4, 4)
    mapped = CallableGenerator(synth, z_dim=5, mapping=torch.nn.Linear(5, 8), latent_dim=8)
    assert mapped.latent_space == "w" and mapped.to_latent(mapped.sample_z([0])).shape == (1, 8)
    with pytest.raises(TypeError):
        CallableGenerator(42, z_dim=8)
    bad = CallableGenerator(lambda l: l, z_dim=8, img_resolution=4)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        bad.synthesize(torch.zeros(1, 8))


class _PairG(torch.nn.Module):
    """A tiny NVIDIA-convention generator: mapping(z, c, truncation_psi) / synthesis(ws, noise_mode)."""

    z_dim, w_dim, num_ws, img_resolution, c_dim = 6, 4, 3, 4, 0

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)
        self.out = torch.nn.Linear(4 * 3, 3 * 16)
        self.register_buffer("w_avg", torch.randn(4))

    def mapping(self, z, c, truncation_psi=1):
        w = self.fc(z)
        return w[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, noise_mode="const"):
        return torch.tanh(self.out(ws.flatten(1))).view(-1, 3, 4, 4)


def test_stylegan2_adapter_truncation():
    G = _PairG()
    a = StyleGAN2Adapter(G, w_avg=G.w_avg, device="cpu")
    assert a.latent_space == "w" and a.latent_dim == 4
    w = a.to_latent(a.sample_z([0, 1]))
    assert w.shape == (2, 4)
    t0 = StyleGAN2Adapter(G, truncation_psi=0.0, w_avg=G.w_avg, device="cpu")
    x = t0.synthesize(w)
    torch.testing.assert_close(x[0], x[1])  # psi = 0: every w collapses to w_avg
    half = StyleGAN2Adapter(G, truncation_psi=0.5, truncation_cutoff=1, w_avg=G.w_avg, device="cpu")
    ws = half.truncate(w)
    torch.testing.assert_close(ws[:, 0], G.w_avg + 0.5 * (w - G.w_avg))
    torch.testing.assert_close(ws[:, 1], w)
    assert half.describe()["truncation_psi"] == 0.5
    with pytest.raises(ValueError, match="w_avg"):
        StyleGAN2Adapter(mapping=G.mapping, synthesis=G.synthesis, z_dim=6, w_dim=4, num_ws=3,
                         img_resolution=4, truncation_psi=0.7)


def test_load_generator_errors():
    with pytest.raises(ValueError, match="unknown generator"):
        load_generator("no-such-model")
    with pytest.raises(FileNotFoundError):
        load_generator("/nonexistent/model.pkl")
