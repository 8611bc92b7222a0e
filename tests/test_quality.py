"""Sample-quality scores: exact scores on known densities, FID/KID, neighbours, sweeps."""

import gzip
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from ddpm.config import DataConfig
from ddpm.data import GaussianMixture, load_dataset
from ddpm.data.toys import gmm8
from ddpm.quality.coverage import chi2_sf, coverage
from ddpm.quality.density import density_reference, density_scores
from ddpm.quality.features import load_or_train_classifier
from ddpm.quality.fid import frechet_distance, kernel_distance
from ddpm.quality.neighbours import close_threshold, neighbour_scores
from ddpm.quality.scores import (
    BAYES_OPTIMAL,
    FLOOR,
    INDEPENDENT,
    NO_FEATURES,
    NOISE,
    as_data,
    sample_quality,
)
from ddpm.quality.steps import quality_vs_steps


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def overlapping_mixture() -> GaussianMixture:
    """3-D, unequal weights, full covariances and overlapping components."""
    a = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.8]], dtype=torch.float64)
    covs = torch.stack([a, 0.5 * torch.eye(3, dtype=torch.float64), a.T @ a])
    means = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [-2.0, 1.0, 1.0]])
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, covs)


@pytest.mark.parametrize("mixture", [gmm8(), overlapping_mixture()], ids=["gmm8", "overlap"])
def test_cross_entropy_of_samples_from_the_true_density_equals_its_entropy(mixture):
    ref = density_reference(mixture, n=100_000, generator=gen(0))
    x = mixture.sample(20_000, generator=gen(1))
    s = density_scores(mixture, x, ref)
    se = math.hypot(s.cross_entropy_se, ref.entropy_se)  # independent draws
    assert abs(s.cross_entropy - ref.entropy) < 4 * se
    # 1% of q lies below its own 1st percentile (binomial SE; threshold from 1e5 draws)
    assert abs(s.low_density_share - 0.01) < 4 * math.sqrt(0.01 * 0.99 / len(x)) + 1e-3
    assert s.modes.p_value > 1e-3 and s.modes.modes_missed == 0


def test_overlapping_components_are_tested_against_their_assignment_rates_not_the_weights():
    mixture = overlapping_mixture()
    ref = density_reference(mixture, n=100_000, generator=gen(0))
    assert abs(sum(ref.assign_probs) - 1) < 1e-12
    assert max(abs(p - w) for p, w in zip(ref.assign_probs, ref.weights, strict=True)) > 0.02
    x = mixture.sample(20_000, generator=gen(2))
    assert density_scores(mixture, x, ref).modes.p_value > 1e-3


def test_a_model_that_drops_a_mode_fails_the_chi_square_test():
    q = gmm8()
    ref = density_reference(q, n=100_000, generator=gen(0))
    dropped = GaussianMixture(torch.full((7,), 1 / 7), q.means[:7], q.covs[:7])
    s = density_scores(q, dropped.sample(2000, generator=gen(3)), ref)
    assert s.modes.modes_missed == 1 and s.modes.counts[7] == 0
    assert s.modes.p_value < 1e-20
    # it puts no mass between the modes: cross-entropy near H(q), the mode count is the tell
    assert abs(s.cross_entropy - ref.entropy) < 0.2
    # a model that keeps every mode but gets the weights wrong fails too, with none missed
    w = torch.tensor([0.2] + [0.8 / 7] * 7, dtype=torch.float64)
    s = density_scores(q, GaussianMixture(w, q.means, q.covs).sample(2000, generator=gen(4)), ref)
    assert s.modes.modes_missed == 0 and s.modes.p_value < 1e-6


def test_chi_square_matches_scipy_and_the_missed_rule():
    counts = torch.tensor([30, 50, 0, 20])
    probs = torch.tensor([0.25, 0.4, 0.15, 0.2], dtype=torch.float64)
    c = coverage(counts, probs)
    ref = scipy.stats.chisquare(counts.numpy(), 100 * probs.numpy())
    assert math.isclose(c.chi2, ref.statistic, rel_tol=1e-12)
    assert math.isclose(c.p_value, ref.pvalue, rel_tol=1e-9)
    assert c.dof == 3 and c.modes_missed == 1  # 15 expected, none seen


def test_chi2_survival_function_is_scipys():
    """Q(k/2, x/2) from torch equals scipy's chi2.sf from the bulk far into the tail."""
    for dof in (1, 2, 3, 7, 15, 63, 999):
        for x in (1e-3, 0.5, 1.0, 3.0, 7.0, 20.0, 60.0, 150.0, 400.0, 1500.0):
            want = scipy.stats.chi2.sf(x, dof)
            assert math.isclose(chi2_sf(x, dof), want, rel_tol=1e-9, abs_tol=1e-300), (x, dof)


def test_samples_between_the_modes_are_counted_as_low_density():
    q = gmm8()
    ref = density_reference(q, n=100_000, generator=gen(0))
    between = torch.zeros(500, 2, dtype=torch.float64)  # the circle's centre: far from all modes
    s = density_scores(q, between, ref)
    assert s.low_density_share == 1.0 and s.cross_entropy > ref.entropy + 100


def test_fid_matches_the_scipy_sqrtm_formula_and_is_zero_for_identical_sets():
    g = gen(5)
    mix = torch.randn(6, 6, generator=g, dtype=torch.float64)
    f1 = torch.randn(400, 6, generator=g, dtype=torch.float64) @ mix
    f2 = 0.7 * torch.randn(300, 6, generator=g, dtype=torch.float64) + 0.3
    a, b = f1.numpy(), f2.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert math.isclose(frechet_distance(f1, f2), expected, rel_tol=1e-8)
    assert frechet_distance(f1, f1) < 1e-9 * float(np.trace(s1))


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    """Mean over repeated pairs of samples ~ 0 within its SE; the biased V-statistic is not."""
    g = gen(6)
    values, biased = [], []
    for _ in range(40):
        f1, f2 = torch.randn(2, 200, 8, generator=g, dtype=torch.float64)
        values.append(kernel_distance(f1, f2, subsets=2, generator=g).value)
        kxx, kyy, kxy = ((a @ b.T / 8 + 1) ** 3 for a, b in ((f1, f1), (f2, f2), (f1, f2)))
        biased.append((kxx.mean() + kyy.mean() - 2 * kxy.mean()).item())
    v = torch.tensor(values)
    assert abs(v.mean()) < 4 * v.std() / math.sqrt(len(v))
    b = torch.tensor(biased)
    assert b.mean() > 4 * b.std() / math.sqrt(len(b))
    shifted = kernel_distance(f1, f2 + 0.5, subsets=10, generator=g)
    assert shifted.value > 5 * shifted.se


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig())


@pytest.fixture(scope="module")
def classifier(digits, tmp_path_factory):
    return load_or_train_classifier(digits, tmp_path_factory.mktemp("cls"), steps=300)


def test_classifier_is_stored_with_its_accuracy_and_reused(digits, classifier, tmp_path):
    assert classifier.trained_now and classifier.info.test_accuracy > 0.9
    assert classifier.path.is_file() and classifier.path.with_suffix(".json").is_file()
    again = load_or_train_classifier(digits, classifier.path.parent, steps=300)
    assert not again.trained_now and again.info == classifier.info
    assert torch.equal(again.features(digits.test), classifier.features(digits.test))
    # training is a function of (data, seed, steps): a second training gives the same weights
    fresh = load_or_train_classifier(digits, tmp_path, steps=300)
    assert fresh.trained_now
    for a, b in zip(fresh.net.parameters(), classifier.net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fid_and_kid_of_the_data_against_itself_and_its_two_halves(digits, classifier):
    f = classifier.features(digits.train)
    assert frechet_distance(f, f) < 1e-6
    kid = kernel_distance(f[:750], f[750:], subsets=10, generator=gen(7))
    assert abs(kid.value) < 4 * kid.se


def test_scores_rank_data_then_a_model_then_independent_pixels_then_noise(digits, tmp_path):
    from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
    from ddpm.training.loop import train

    cfg = RunConfig(
        diffusion=DiffusionConfig(T=50),
        model=ModelConfig(kind="mlp", hidden=128, depth=2),
        train=TrainConfig(steps=400, batch_size=128, warmup=20, num_samples=300),
    )
    res = train(cfg, tmp_path / "run", progress=False)
    model_samples = torch.from_numpy(np.load(res.samples_path.with_suffix(".npy")))
    model_samples = digits.spec.to_model(model_samples).float()
    r = sample_quality(digits, model_samples, cache_dir=tmp_path / "cls", seed=0)
    fid = {row.name: row.fid for row in r.rows}
    kid = {row.name: (row.kid, row.kid_se) for row in r.rows}
    assert fid[FLOOR] < fid["samples"] < fid[NOISE]
    assert fid[FLOOR] < fid[INDEPENDENT] < fid[NOISE]
    # KID: the floor is ~0, noise is far worse than the model (difference beyond both SEs)
    assert abs(kid[FLOOR][0]) < 4 * kid[FLOOR][1]
    gap = kid[NOISE][0] - kid["samples"][0]
    assert gap > 4 * math.hypot(kid[NOISE][1], kid["samples"][1])
    assert r.row(FLOOR).confident_share > r.row(NOISE).confident_share


def test_discrete_samples_are_scored_as_the_images_they_stand_for(digits):
    grid = torch.linspace(-1, 1, 17).repeat(4)[:64].reshape(1, 1, 8, 8)
    assert torch.equal(as_data(grid + 0.05, digits.spec), grid)  # rounded to the 17 levels
    assert torch.equal(as_data(grid - 0.05, digits.spec), grid)
    assert as_data(torch.full((1, 1, 8, 8), 3.0), digits.spec).max() == 1.0  # clipped


def test_unlabelled_data_get_nearest_neighbour_scores_only():
    data = load_dataset(DataConfig(name="moons", n_train=2000, n_test=500))
    r = sample_quality(data, data.train[:300].clone())
    assert r.kind == "neighbours" and r.note == NO_FEATURES
    copies, floor = r.samples, r.row(FLOOR)
    assert copies.copies == 300 and copies.close_share == 1.0
    # held-out data: 1% closer than its own 1st percentile, by construction (up to ties)
    assert abs(floor.close_share - 0.01) < 0.005 and floor.copies == 0
    noise = neighbour_scores(torch.randn(300, 2, generator=gen(8)), data.train, 0.0, "noise")
    assert noise.median_distance > floor.median_distance
    assert close_threshold(data.test, data.train) > 0


def test_gmm8_report_has_the_floor_and_extra_rows():
    data = load_dataset(DataConfig(name="gmm8", n_train=1000, n_test=1000))
    best = data.density.sample(1000, generator=gen(9))
    r = sample_quality(data, data.density.sample(1000, generator=gen(10)), {"best": best})
    assert [row.name for row in r.rows] == ["samples", "best", FLOOR]
    d = r.to_dict()
    assert d["kind"] == "density" and len(d["rows"]) == 3 and "entropy" in d["reference"]


def test_quality_vs_steps_times_and_scores_each_sampler_and_k():
    q = gmm8()
    data = load_dataset(DataConfig(name="gmm8", n_train=1000, n_test=1000))

    def draw(sampler, k):  # a stand-in sampler whose error shrinks like 1 / K
        noise = 1.0 / k if sampler == "a" else 2.0 / k
        return q.sample(2000, generator=gen(k)) + noise * torch.randn(2000, 2, generator=gen(0))

    grid = [("a", 1), ("a", 10), ("a", 100), ("b", 10)]
    rows = quality_vs_steps(grid, draw, lambda s, k, x: sample_quality(data, x))
    assert [(r.sampler, r.K) for r in rows] == grid
    ce = [r.headline()["cross_entropy"] for r in rows]
    assert ce[0] > ce[1] > ce[2] and ce[3] > ce[1]
    assert all(r.seconds >= 0 and r.bits_per_dim is None for r in rows)
    assert rows[0].to_dict()["K"] == 1


def test_mnist_labels_are_read_from_the_same_folder(tmp_path):
    def idx(arr, magic):
        header = np.array([magic, *arr.shape], dtype=">u4").tobytes()
        return header + arr.astype(np.uint8).tobytes()

    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx(images, 0x803))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx(images[:2], 0x803))
    assert not load_dataset(DataConfig(name="mnist", root=str(tmp_path))).labelled
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx(np.arange(5), 0x801))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx(np.array([7, 3]), 0x801))
    data = load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert data.train_labels.tolist() == [0, 1, 2, 3, 4] and data.test_labels.tolist() == [7, 3]
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx(np.arange(4), 0x801))
    with pytest.raises(Exception, match="holds 4 labels for 5 images"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))


def test_digits_carry_their_labels(digits):
    assert digits.labelled and digits.train_labels.shape == (1500,)
    assert digits.test_labels.shape == (297,)
    assert set(digits.train_labels.unique().tolist()) == set(range(10))


@pytest.fixture(scope="module")
def tiny_gmm8_run(tmp_path_factory):
    from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
    from ddpm.training.loop import train

    cfg = RunConfig(
        diffusion=DiffusionConfig(T=20),
        model=ModelConfig(kind="mlp", hidden=32, depth=1),
        data=DataConfig(name="gmm8", n_train=1000, n_test=500),
        train=TrainConfig(steps=20, batch_size=64, warmup=5, num_samples=8),
    )
    out = tmp_path_factory.mktemp("runs") / "gmm8"
    train(cfg, out, progress=False)
    return out


def test_cli_sample_metrics_and_evaluate_samples(tiny_gmm8_run, tmp_path, capsys):
    import json

    from ddpm.cli.main import main

    png = tmp_path / "s.png"
    assert main(["sample", str(tiny_gmm8_run), "-n", "64", "--metrics", "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "H(q) data entropy" in text and "bayes-optimal samples" in text
    doc = json.loads((tmp_path / "s_quality.json").read_text())
    names = [r["name"] for r in doc["rows"]]
    assert doc["kind"] == "density" and names == ["samples", "bayes-optimal samples", FLOOR]
    assert doc["rows"][0]["n"] == 64 and len(doc["rows"][0]["modes"]["counts"]) == 8
    # the samples scored are the samples written: same cross-entropy from the saved array
    x = torch.from_numpy(np.load(tmp_path / "s.npy"))
    ref = density_reference(gmm8(), generator=gen(0))
    ce = density_scores(gmm8(), x, ref).cross_entropy
    assert math.isclose(ce, doc["rows"][0]["cross_entropy"], rel_tol=1e-5)

    args = ["evaluate", str(tiny_gmm8_run), "-n", "50", "--num-samples", "40", "--json"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sample_quality"]["rows"][0]["n"] == 40 and "neg_elbo" in doc
    saved = json.loads((tmp_path / "eval_test.json").read_text())
    assert saved["sample_quality"]["rows"] == doc["sample_quality"]["rows"]
    assert "draw" in saved["sample_quality"]["seconds"]


def test_cli_rejects_too_few_samples_in_one_line(tiny_gmm8_run, capsys):
    from ddpm.cli.main import main

    def one_line(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        return err[0]

    run = str(tiny_gmm8_run)
    assert one_line(["evaluate", run, "--num-samples", "1"]) == (
        "ddpm evaluate: error: --num-samples must be an integer >= 2 (got 1)"
    )
    assert "--samplers and --eta apply with --respacing" in one_line(
        ["evaluate", run, "--samplers", "ddim"]
    )
    assert "sampler" in one_line(["evaluate", run, "--respacing", "5", "--num-samples", "9",
                                  "--samplers", "euler"])  # fmt: skip
    assert "--classifier-dir applies with --metrics" in one_line(
        ["sample", run, "--classifier-dir", "x"]
    )
    data = load_dataset(DataConfig())
    with pytest.raises(Exception, match="needs at least 20 samples"):
        sample_quality(data, data.test[:10])


def test_quality_vs_steps_figure_plots_the_rows(tmp_path):
    from ddpm.quality.steps import StepRow
    from ddpm.report.quality import quality_curves, save_quality_vs_steps

    data = load_dataset(DataConfig(name="gmm8", n_train=500, n_test=500))
    report = sample_quality(data, data.test[:200], {BAYES_OPTIMAL: data.train[:300]})
    rows = [
        StepRow("ddim", 100, 2.0, report, 1.5, 0.1),
        StepRow("ancestral", 10, 0.5, report),
        StepRow("ddim", 10, 0.4, report, 2.5, 0.1),
    ]
    c = quality_curves(rows)
    assert c["ddim"]["K"].tolist() == [10, 100] and c["ddim"]["bits_per_dim"].tolist() == [2.5, 1.5]
    assert c["ancestral"]["quality"].tolist() == [report.samples.cross_entropy]
    assert np.isnan(c["ancestral"]["bits_per_dim"]).all()
    best = report.row(BAYES_OPTIMAL).cross_entropy
    assert c["ddim"]["bayes_optimal"].tolist() == [best, best]
    path = save_quality_vs_steps(rows, tmp_path / "q.png", floor=0.3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_evaluate_steps_with_samples_gives_the_quality_table(tiny_gmm8_run, tmp_path, capsys):
    import json

    from ddpm.cli.main import main

    args = ["evaluate", str(tiny_gmm8_run), "-n", "30", "--respacing", "5", "20"]
    assert main([*args, "--num-samples", "40", "--out", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["quality_steps"]
    assert [(r["sampler"], r["K"]) for r in rows] == [
        ("ancestral", 5), ("ancestral", 20), ("ddim", 5), ("ddim", 20)
    ]  # fmt: skip
    assert all((r["steps"], r["spacing"]) == (str(r["K"]), None) for r in rows)  # the spelling
    bpd = {s["K"]: s["bits_per_dim"] for s in doc["steps"]}
    for r in rows:
        assert r["bits_per_dim"] == (bpd[r["K"]] if r["sampler"] == "ancestral" else None)
        names = [row["name"] for row in r["report"]["rows"]]
        assert names == ["samples", "bayes-optimal samples", FLOOR] and r["seconds"] > 0
    assert (tmp_path / "quality_steps.png").is_file()
    # K = T through respacing is the run's own process: the same samples as `ddpm sample`
    assert main(["sample", str(tiny_gmm8_run), "-n", "40", "--metrics", "--out",
                 str(tmp_path / "s.png")]) == 0  # fmt: skip
    capsys.readouterr()
    full = json.loads((tmp_path / "s_quality.json").read_text())["rows"][0]
    assert main([*args[:-2], "20", "--num-samples", "40", "--samplers", "ancestral", "--out",
                 str(tmp_path), "--json"]) == 0  # fmt: skip
    same = json.loads(capsys.readouterr().out)["quality_steps"][0]["report"]["rows"][0]
    assert same["cross_entropy"] == full["cross_entropy"]
