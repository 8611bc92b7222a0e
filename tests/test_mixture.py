"""GaussianMixture against independent float64 NumPy formulas, grids and closed forms."""

import json
import math

import numpy as np
import pytest
import torch

from ddpm.config import DataConfig
from ddpm.data import GaussianMixture, load_dataset
from ddpm.data.toys import gmm8
from ddpm.errors import DataError


def random_mixture(k: int, d: int, seed: int) -> GaussianMixture:
    """K components in D dims with full, well-conditioned covariances."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, k)
    a = rng.normal(size=(k, d, d))
    covs = 0.3 * a @ a.transpose(0, 2, 1) / d + 0.05 * np.eye(d)
    return GaussianMixture(
        torch.tensor(w / w.sum()), torch.tensor(rng.normal(0, 2, (k, d))), torch.tensor(covs)
    )


def numpy_log_normal(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x; mean, cov) per row, written out with inv and slogdet."""
    d = x - mean
    _, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
    return -0.5 * (len(mean) * np.log(2 * np.pi) + logdet + maha)


def numpy_log_prob(m: GaussianMixture, x: np.ndarray) -> np.ndarray:
    w, mu, cov = m.weights.numpy(), m.means.numpy(), m.covs.numpy()
    terms = np.stack([np.log(w[k]) + numpy_log_normal(x, mu[k], cov[k]) for k in range(len(w))])
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


# float64 round-off in a D <= 3 solve with condition number < 1e3 is far below 1e-10 relative;
# atol 1e-12 covers log-densities that happen to lie near 0.
RTOL, ATOL = 1e-10, 1e-12


@pytest.mark.parametrize("mixture", [gmm8(), random_mixture(4, 3, seed=1)], ids=["gmm8", "k4d3"])
def test_log_prob_matches_numpy_formula(mixture):
    x = mixture.sample(500, generator=torch.Generator().manual_seed(3))
    x = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    got = mixture.log_prob(x)
    assert got.dtype == torch.float64 and got.shape == (500,)
    np.testing.assert_allclose(got.numpy(), numpy_log_prob(mixture, x.numpy()), RTOL, ATOL)


def test_log_prob_far_from_all_components_is_finite():
    x = torch.tensor([[100.0, -100.0]], dtype=torch.float64)
    got = gmm8().log_prob(x)
    np.testing.assert_allclose(got.numpy(), numpy_log_prob(gmm8(), x.numpy()), RTOL)


def test_responsibilities_are_bayes_rule():
    m = random_mixture(3, 2, seed=2)
    x = m.sample(200, generator=torch.Generator().manual_seed(0))
    terms = np.stack(
        [
            np.log(m.weights[k].item()) + numpy_log_normal(x.numpy(), m.means[k].numpy(), c)
            for k, c in enumerate(m.covs.numpy())
        ],
        axis=1,
    )
    expected = np.exp(terms - numpy_log_prob(m, x.numpy())[:, None])
    np.testing.assert_allclose(m.responsibilities(x).numpy(), expected, RTOL, ATOL)


def test_sample_moments_within_standard_errors():
    m = random_mixture(3, 3, seed=5)
    n = 200_000
    x = m.sample(n, generator=torch.Generator().manual_seed(0))
    w, mu, cov = m.weights, m.means, m.covs
    mean = w @ mu  # E[x] = sum_k w_k mu_k
    second = torch.einsum("k,kij->ij", w, cov + mu[:, :, None] * mu[:, None, :])  # E[x x^T]
    assert ((x.mean(0) - mean).abs() <= 4 * x.std(0) / math.sqrt(n)).all()
    prod = x[:, :, None] * x[:, None, :]
    assert ((prod.mean(0) - second).abs() <= 4 * prod.std(0) / math.sqrt(n)).all()


def test_entropy_of_single_gaussian_matches_closed_form():
    m = random_mixture(1, 3, seed=6)
    h, se = m.entropy_mc(100_000, generator=torch.Generator().manual_seed(0))
    exact = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * m.covs[0].numpy())[1]
    assert 0 < se < 0.01
    assert abs(h - exact) < 4 * se


def test_entropy_of_separated_gmm8_is_log8_plus_component_entropy():
    # Neighbouring means are 4 sin(pi/8) = 1.53 = 15 std apart: overlap changes H by < 1e-40.
    h, se = gmm8().entropy_mc(100_000, generator=torch.Generator().manual_seed(1))
    exact = math.log(8) + math.log(2 * math.pi * math.e * 0.1**2)
    assert abs(h - exact) < 4 * se


def test_diffused_moments_match_noised_samples():
    m, ab, n = random_mixture(2, 2, seed=7), 0.6, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = m.sample(n, generator=g)
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    q = m.diffused(ab)
    assert torch.equal(q.weights, m.weights)
    mean = q.weights @ q.means
    second = torch.einsum("k,kij->ij", q.weights, q.covs + q.means[:, :, None] * q.means[:, None])
    assert ((xt.mean(0) - mean).abs() <= 4 * xt.std(0) / math.sqrt(n)).all()
    prod = xt[:, :, None] * xt[:, None, :]
    assert ((prod.mean(0) - second).abs() <= 4 * prod.std(0) / math.sqrt(n)).all()


def gaussian_conditioning(mu, cov, xt, ab):
    """E[x0 | xt] from the joint of (x0, xt): mu + C12 C22^{-1} (xt - sqrt(ab) mu), NumPy."""
    c12 = math.sqrt(ab) * cov
    c22 = ab * cov + (1 - ab) * np.eye(len(mu))
    return mu + np.linalg.solve(c22, (xt - math.sqrt(ab) * mu).T).T @ c12.T


@pytest.mark.parametrize("ab", [0.0, 1e-4, 0.3, 0.9, 1 - 1e-9, 1.0])
def test_posterior_mean_of_single_gaussian_is_gaussian_conditioning(ab):
    m = random_mixture(1, 3, seed=8)
    xt = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = m.posterior_mean_x0(xt, ab).numpy()
    expected = gaussian_conditioning(m.means[0].numpy(), m.covs[0].numpy(), xt.numpy(), ab)
    np.testing.assert_allclose(got, expected, RTOL, ATOL)


def bayes_on_grid_1d(m: GaussianMixture, xt: np.ndarray, ab: float) -> np.ndarray:
    """E[x0 | xt] = int x0 q(x0) N(xt; sqrt(ab) x0, 1 - ab) dx0 / int q(x0) N(...) dx0.

    Uniform grid of step 5e-4 on [-20, 20]: the integrands are Gaussian bumps of width >= 0.031
    (60 steps), for which the trapezoid rule errs by ~exp(-2 pi^2 (width / step)^2), and the
    mass outside the grid is below 1e-40, so the grid value is exact to float64 round-off.
    """
    x0 = np.arange(-20, 20, 5e-4)
    prior = np.exp(numpy_log_prob(m, x0[:, None]))
    lik = np.exp(-0.5 * (xt[:, None] - math.sqrt(ab) * x0) ** 2 / (1 - ab))  # [N, G]
    return (lik * prior * x0).sum(1) / (lik * prior).sum(1)


@pytest.mark.parametrize("ab", [0.01, 0.3, 0.9, 0.999])
def test_posterior_mean_of_1d_mixture_matches_bayes_on_a_grid(ab):
    m = GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3]),
        torch.tensor([[-2.0], [0.5], [3.0]]),
        torch.tensor([[[0.09]], [[0.25]], [[1.0]]]),
    )
    xt = np.linspace(-3, 4, 15)
    got = m.posterior_mean_x0(torch.tensor(xt[:, None]), ab)[:, 0].numpy()
    np.testing.assert_allclose(got, bayes_on_grid_1d(m, xt, ab), rtol=1e-9, atol=1e-12)


def test_posterior_mean_of_2d_mixture_matches_bayes_on_a_grid():
    # Step 0.02 on [-10, 10]^2: the narrowest bump (prior eigen-std >= 0.31, likelihood std
    # sqrt(0.4 / 0.6) = 0.82) spans >= 15 steps, trapezoid error ~exp(-2 pi^2 15^2) ~ 0, and
    # every component lies > 10 of its stds inside the grid, so truncation is below 1e-20.
    m = GaussianMixture(
        torch.tensor([0.3, 0.5, 0.2]),
        torch.tensor([[-1.0, 0.5], [1.0, -1.0], [0.5, 1.5]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]], [[0.1, 0], [0, 0.6]]]),
    )
    assert torch.linalg.eigvalsh(m.covs).min().sqrt() > 0.31
    assert (m.means.abs().max() + 10 * torch.linalg.eigvalsh(m.covs).max().sqrt()) < 10
    ab = 0.6
    g = np.arange(-10, 10, 0.02)
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)  # [G, 2]
    prior = np.exp(numpy_log_prob(m, grid))
    xt = np.array([[0.0, 0.0], [1.0, -0.5], [-1.5, 2.0], [2.5, 2.5]])
    diff = xt[:, None, :] - math.sqrt(ab) * grid[None]
    post = np.exp(-0.5 * (diff**2).sum(-1) / (1 - ab)) * prior  # [N, G]
    expected = post @ grid / post.sum(1, keepdims=True)
    got = m.posterior_mean_x0(torch.tensor(xt), ab).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


def test_posterior_mean_takes_one_alpha_bar_per_example():
    m = random_mixture(4, 3, seed=10)
    xt = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab = torch.tensor([0.0, 1e-6, 0.2, 0.7, 1 - 1e-12, 1.0], dtype=torch.float64)
    got = m.posterior_mean_x0(xt, ab)
    assert got.shape == (6, 3)
    for i in range(6):
        one = m.posterior_mean_x0(xt[i : i + 1], ab[i].item())
        np.testing.assert_allclose(got[i].numpy(), one[0].numpy(), rtol=1e-13, atol=1e-13)


def test_posterior_mean_limits_alpha_bar_to_one_and_zero():
    m = random_mixture(4, 3, seed=11)
    xt = 3 * torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # ab = 1: x_t is x_0. Just below 1: within O(1 - ab) of x_t, and no NaN.
    np.testing.assert_allclose(m.posterior_mean_x0(xt, 1.0).numpy(), xt.numpy(), rtol=1e-12)
    near = m.posterior_mean_x0(xt, 1 - 1e-14)
    assert torch.isfinite(near).all() and (near - xt).abs().max() < 1e-11
    # ab = 0: x_t carries no information about x_0, so E[x_0 | x_t] = E[x_0].
    prior_mean = (m.weights @ m.means).expand(20, 3)
    np.testing.assert_allclose(m.posterior_mean_x0(xt, 0.0).numpy(), prior_mean.numpy(), 1e-12)


def test_posterior_mean_averages_to_the_prior_mean():
    # Tower rule E[E[x0 | xt]] = E[x0], Monte Carlo within 4 standard errors.
    m, ab, n = random_mixture(3, 3, seed=12), 0.5, 100_000
    g = torch.Generator().manual_seed(0)
    x0 = m.sample(n, generator=g)
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    x0_hat = m.posterior_mean_x0(xt, ab)
    assert ((x0_hat.mean(0) - m.weights @ m.means).abs() <= 4 * x0_hat.std(0) / math.sqrt(n)).all()


def test_bad_alpha_bar_is_rejected():
    m, xt = gmm8(), torch.zeros(3, 2)
    with pytest.raises(DataError, match=r"alpha_bar must lie in \[0, 1\]"):
        m.posterior_mean_x0(xt, 1.5)
    with pytest.raises(DataError, match="N = 3"):
        m.posterior_mean_x0(xt, torch.full((4,), 0.5))
    with pytest.raises(DataError, match=r"shape \[N, 2\]"):
        m.log_prob(torch.zeros(3, 5))


# -- JSON ------------------------------------------------------------------------------------


def test_json_round_trip_in_three_dimensions(tmp_path):
    m = random_mixture(3, 3, seed=13)
    path = tmp_path / "mix3.json"
    path.write_text(json.dumps(m.to_dict()))
    back = GaussianMixture.from_json_file(path)
    for name in ("weights", "means", "covs"):
        assert torch.equal(getattr(back, name), getattr(m, name))


def test_stds_shorthand_gives_diagonal_covariances():
    d = {"weights": [0.5, 0.5], "means": [[0, 0, 0], [1, 1, 1]], "stds": [0.5, [1, 2, 3]]}
    with pytest.raises(DataError, match="'stds'"):  # mixing scalars and lists is ragged
        GaussianMixture.from_dict(d)
    iso = GaussianMixture.from_dict({**d, "stds": [0.5, 2.0]})
    assert torch.equal(iso.covs[1], 4.0 * torch.eye(3, dtype=torch.float64))
    diag = GaussianMixture.from_dict({**d, "stds": [[1, 1, 1], [1, 2, 3]]})
    assert torch.equal(diag.covs[1], torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)))


def test_load_dataset_samples_a_json_mixture(tmp_path):
    m = random_mixture(2, 3, seed=14)
    path = tmp_path / "blobs.json"
    path.write_text(json.dumps(m.to_dict()))
    data = load_dataset(DataConfig(name=str(path), n_train=300, n_test=100))
    assert data.spec.name == "blobs" and data.spec.shape == (3,) and data.spec.levels is None
    assert data.train.shape == (300, 3) and data.test.shape == (100, 3)
    assert data.train.dtype == torch.float32
    assert torch.equal(data.density.covs, m.covs)
    again = load_dataset(DataConfig(name=str(path), n_train=300, n_test=100))
    assert torch.equal(again.train, data.train) and not torch.equal(data.train[:100], data.test)


GOOD = {"weights": [0.25, 0.75], "means": [[0.0, 0.0], [1.0, 1.0]], "stds": [1.0, 0.5]}
FULL = {**{k: v for k, v in GOOD.items() if k != "stds"}, "covariances": [np.eye(2).tolist()] * 2}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read a JSON mixture"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({**GOOD, "colour": 1}), "unknown key(s) colour"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "means"}), "missing key 'means'"),
        (json.dumps({**GOOD, "covariances": FULL["covariances"]}), "exactly one of"),
        (json.dumps({**GOOD, "weights": [-0.25, 1.25]}), "'weights' must all be > 0"),
        (json.dumps({**GOOD, "weights": [0.3, 0.6]}), "'weights' sum to 0.9, not 1"),
        (json.dumps({**GOOD, "weights": [0.5, 0.5, 0.0]}), "'means' has 2 rows but 'weights'"),
        (json.dumps({**GOOD, "means": [[0.0, 0.0], [1.0]]}), "'means' must be a rectangular"),
        (json.dumps({**GOOD, "means": [[0.0, None], [1, 1]]}), "'means' must be a rectangular"),
        (json.dumps({**GOOD, "stds": [1.0, -1.0]}), "'stds' must all be finite and > 0"),
        (json.dumps({**GOOD, "stds": [[1.0, 1.0, 1.0]] * 2}), "'stds' has shape [2, 3]"),
        (json.dumps({**FULL, "covariances": [[1.0, 0.0]] * 2}), "'covariances' must be a non"),
        (json.dumps({**FULL, "covariances": [np.eye(3).tolist()] * 2}), "expected [2, 2, 2]"),
        (json.dumps({**FULL, "covariances": [[[1, 0.5], [0, 1]]] * 2}), "[0] is not symmetric"),
        (
            json.dumps({**FULL, "covariances": [np.eye(2).tolist(), [[1, 2], [2, 1]]]}),
            "'covariances'[1] is not positive definite",
        ),
    ],
)
def test_bad_mixture_files_are_named_in_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name=str(path)))
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_missing_mixture_file(tmp_path):
    with pytest.raises(DataError, match="mixture file .*nope.json not found"):
        load_dataset(DataConfig(name=str(tmp_path / "nope.json")))
