"""The VAE baseline: bounds against a linear-Gaussian VAE (factor analysis) whose log p(x) is
known in closed form, rate + distortion = -ELBO, config round trips, exact resume, the CPU
budget, view 3 beside a DDPM, and bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from ddpm.cli.main import main
from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.data import DataSpec
from ddpm.errors import ConfigError
from ddpm.jobs.vae import compare_runs
from ddpm.loader import load
from ddpm.process.gaussian import normal_kl
from ddpm.process.rng import seeded_generator
from ddpm.requests import VaeEvaluationRequest
from ddpm.runs.checkpoint import load_tensors
from ddpm.training.loop import train
from ddpm.vae.evaluate import evaluate_vae
from ddpm.vae.model import (
    Vae,
    VaeConfig,
    VaeRunConfig,
    num_parameters,
    sized_like,
    vae_elbo_terms,
    vae_iw_curve,
    vae_iw_log_weights,
)
from ddpm.vae.train import load_vae_run, train_vae

D, Z = 3, 2


def factor_analysis(exact_posterior: bool) -> tuple[Vae, dict]:
    """A depth-0 VAE: p(z) = N(0, I), p(x|z) = N(W z + b, psi I); the encoder is the exact
    posterior (W has orthogonal columns, so it is diagonal) or a perturbed one. float64."""
    vae = Vae(VaeConfig(latent_dim=Z, net="mlp", depth=0), (D,)).double()
    W = torch.tensor([[1.0, 0.5], [-1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    W[:, 1] -= (W[:, 0] @ W[:, 1]) / (W[:, 0] @ W[:, 0]) * W[:, 0]  # orthogonal columns
    b = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    psi = 0.25
    S = torch.linalg.inv(torch.eye(Z, dtype=torch.float64) + W.T @ W / psi)  # diagonal
    A = S @ W.T / psi  # posterior mean = A (x - b)
    log_s = torch.diagonal(S).log()
    if not exact_posterior:
        A, log_s = 0.7 * A, log_s + 0.8
    enc, dec = vae.encoder[1][0], vae.decoder[0][0]
    with torch.no_grad():
        enc.weight.copy_(torch.cat([A, torch.zeros(Z, D, dtype=torch.float64)]))
        enc.bias.copy_(torch.cat([-A @ b + (0 if exact_posterior else 0.2), log_s]))
        dec.weight.copy_(W)
        dec.bias.copy_(b)
        vae.decoder_log_var.fill_(math.log(psi))
    cov = W @ W.T + psi * torch.eye(D, dtype=torch.float64)
    return vae, {"W": W, "b": b, "psi": psi, "A": A, "log_s": log_s, "cov": cov}


def exact_log_p(fa: dict, x: torch.Tensor) -> torch.Tensor:
    return torch.distributions.MultivariateNormal(fa["b"], fa["cov"]).log_prob(x)


def data(n: int, fa: dict, seed: int) -> torch.Tensor:
    g = seeded_generator(seed)
    return (
        fa["b"]
        + torch.randn(n, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(fa["cov"]).T
    )


def test_exact_posterior_makes_every_importance_weight_equal_log_p():
    vae, fa = factor_analysis(exact_posterior=True)
    x = data(50, fa, 0)
    log_w = vae_iw_log_weights(vae, x, None, K=7, generator=seeded_generator(1))
    assert log_w.shape == (7, 50)
    torch.testing.assert_close(log_w, exact_log_p(fa, x).expand(7, 50), rtol=1e-10, atol=1e-10)


def test_rate_and_distortion_match_the_closed_form_and_bound_log_p():
    vae, fa = factor_analysis(exact_posterior=False)
    x = data(100, fa, 2)
    W, b, psi = fa["W"], fa["b"], fa["psi"]
    with torch.no_grad():
        q = vae.encode(x)
    s = fa["log_s"].exp()
    rate_cf = normal_kl(q.mean, q.log_var, torch.zeros_like(q.mean), torch.zeros_like(q.mean))
    # E_q[-log N(x; W z + b, psi I)]
    #   = 1/2 sum_i [log 2 pi psi + ((x - W m - b)_i^2 + (W S W^T)_ii) / psi]
    resid2 = (x - q.mean @ W.T - b) ** 2 + (W**2 @ s)
    distortion_cf = 0.5 * (math.log(2 * math.pi * psi) + resid2 / psi).sum(-1)
    neg_elbo_cf = rate_cf.sum(-1) + distortion_cf
    gap = neg_elbo_cf + exact_log_p(fa, x)
    assert bool((gap > 1e-3).all())  # -ELBO > -log p for an encoder that is not the posterior
    # Monte Carlo distortion of one example, 20000 independent single draws: within 4 SE
    x1 = x[:1].expand(20000, D)
    with torch.no_grad():
        t = vae_elbo_terms(vae, x1, None, samples=1, generator=seeded_generator(3))
    torch.testing.assert_close(t.rate, rate_cf.sum(-1)[:1].expand(20000), rtol=1e-12, atol=0)
    se = t.distortion.std() / math.sqrt(20000)
    assert abs(float(t.distortion.mean() - distortion_cf[0])) < 4 * float(se)
    torch.testing.assert_close(t.total(), t.rate + t.distortion, rtol=0, atol=0)


def test_iw_bound_rises_towards_log_p_with_k():
    vae, fa = factor_analysis(exact_posterior=False)
    x = data(2000, fa, 4)  # 2000 examples: the paired differences below are >= 5 SE
    nll = -exact_log_p(fa, x)
    curve = vae_iw_curve(vae, x, None, (1, 10, 100, 1000), seeded_generator(5), max_batch=20000)
    gaps = [e.nll - nll for e in curve]  # -L_K - (-log p) >= 0 in expectation, falling with K
    means = [float(g.mean()) for g in gaps]
    ses = [float(g.std() / math.sqrt(len(g))) for g in gaps]
    assert means[0] > 0.3
    for k in range(3):
        d = gaps[k] - gaps[k + 1]  # paired: the same draws are nested
        assert float(d.mean()) > 4 * float(d.std() / math.sqrt(len(d)))
    assert means[-1] > -4 * ses[-1]
    assert means[-1] < 0.1 * means[0]


def test_evaluation_terms_sum_to_neg_elbo_in_raw_units():
    vae, fa = factor_analysis(exact_posterior=False)
    x = data(64, fa, 6)
    spec = DataSpec("fa", (D,), None, shift=1.0, scale=0.5)  # log-Jacobian -D log 0.5
    ev = evaluate_vae(vae, x, spec, VaeEvaluationRequest(iw=(1, 4)), generator=seeded_generator(7))
    assert ev.terms["rate"] + ev.terms["distortion"] == pytest.approx(ev.neg_elbo, abs=1e-10)
    assert ev.log_jacobian == pytest.approx(-D * math.log(0.5))
    nll = float((-exact_log_p(fa, x)).mean()) - ev.log_jacobian
    assert ev.neg_elbo > nll  # -ELBO >= -log p (gap >> SE here)
    assert ev.bits_per_dim == pytest.approx(ev.neg_elbo / (D * math.log(2)), rel=1e-12)
    assert [b.K for b in ev.iw] == [1, 4] and ev.T == 0 and ev.per_timestep == []


def test_config_round_trips_through_json_and_rejects_bad_values():
    cfg = VaeRunConfig(
        vae=VaeConfig(latent_dim=3, net="conv", channels=8, decoder_variance="fixed"),
        data=DataConfig(name="gmm8", n_train=100),
        train=TrainConfig(steps=7),
        cpu_minutes=0.25,
    )
    assert VaeRunConfig.from_dict(cfg.to_dict()) == cfg
    assert VaeRunConfig.from_json(cfg.to_json()) == cfg
    assert VaeRunConfig.from_dict(VaeRunConfig().to_dict()) == VaeRunConfig()
    with pytest.raises(ConfigError, match="unknown key"):
        VaeConfig.from_dict({"latent": 2})
    with pytest.raises(ConfigError, match="unknown VAE net 'resnet'"):
        VaeConfig(net="resnet")
    with pytest.raises(ConfigError, match="H and W divisible by 4"):
        Vae(VaeConfig(net="conv"), (1, 6, 6))


def test_sized_like_matches_a_parameter_count():
    for shape, target in (((2,), 50_000), ((1, 8, 8), 120_000)):
        cfg = sized_like(VaeConfig(), shape, target)
        got = num_parameters(Vae(cfg, shape))
        narrower = dataclasses.replace(
            cfg, **{k: getattr(cfg, k) - 1 for k in ("hidden", "channels")}
        )
        wider = dataclasses.replace(cfg, **{k: getattr(cfg, k) + 1 for k in ("hidden", "channels")})
        for other in (narrower, wider):  # no neighbouring width is closer
            assert abs(got - target) <= abs(num_parameters(Vae(other, shape)) - target)


def tiny(steps: int, **kw) -> VaeRunConfig:
    return VaeRunConfig(
        vae=VaeConfig(hidden=16, latent_dim=2),
        data=DataConfig(name="gmm8", n_train=256, n_test=64),
        train=TrainConfig(steps=steps, batch_size=32, warmup=2, log_every=1, num_samples=8),
        **kw,
    )


def test_resume_equals_one_run_bit_for_bit(tmp_path):
    train_vae(tiny(6), tmp_path / "a", progress=False)
    train_vae(tiny(3), tmp_path / "b", progress=False)
    train_vae(tiny(6), tmp_path / "b", resume=True, progress=False)
    a, _ = load_tensors(tmp_path / "a" / "checkpoint.safetensors")
    b, _ = load_tensors(tmp_path / "b" / "checkpoint.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(s) for s in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    cpu = [r["cpu_seconds"] for r in log]
    assert cpu == sorted(cpu) and cpu[0] > 0  # summed over the resume
    assert load_vae_run(tmp_path / "b").cpu_seconds == pytest.approx(cpu[-1], abs=1e-3)


def test_cpu_budget_stops_training(tmp_path):
    res = train_vae(tiny(1000, cpu_minutes=1e-9), tmp_path / "r", progress=False)
    assert res.steps == 1 and res.cpu_seconds > 1e-9 * 60


def test_view3_puts_a_ddpm_beside_a_vae(tmp_path):
    cfg = RunConfig(
        diffusion=DiffusionConfig(T=10),
        model=ModelConfig(hidden=16, depth=1),
        data=tiny(1).data,
        train=TrainConfig(steps=3, batch_size=32, warmup=1, log_every=1, num_samples=8),
    )
    train(cfg, tmp_path / "ddpm", progress=False)
    vae_args = ["vae", "train", "--data", "gmm8", "--n-train", "256", "--n-test", "64"]
    vae_args += ["--hidden", "16", "--latent-dim", "2", "--max-steps", "3", "--batch-size", "32"]
    vae_args += ["--warmup", "2", "--log-every", "1", "--num-samples", "8", "--quiet"]
    vae_args += ["--params-like", str(tmp_path / "ddpm"), "--out", str(tmp_path / "vae")]
    assert main(vae_args) == 0
    request = VaeEvaluationRequest(n=32, iw=(1, 8), ddpm_iw=(1, 2))
    view = compare_runs(load(tmp_path / "ddpm"), tmp_path / "vae", request)
    ddpm_row, vae_row = view.rows
    for row, ev in zip(view.rows, view.evaluations, strict=True):
        assert row.rate + row.distortion == pytest.approx(row.neg_elbo, abs=1e-9)
        assert row.neg_elbo == ev.neg_elbo and row.iw_K == ev.iw[-1].K
    ddpm_ev = view.evaluations[0]
    assert ddpm_row.rate == pytest.approx(ddpm_ev.terms["prior"] + ddpm_ev.terms["diffusion"])
    assert ddpm_row.cpu_seconds > 0 and vae_row.cpu_seconds > 0
    vcfg = load_vae_run(tmp_path / "vae").config.vae  # --params-like: the closest width
    for h in (vcfg.hidden - 1, vcfg.hidden + 1):
        other = num_parameters(Vae(dataclasses.replace(vcfg, hidden=h), (2,)))
        assert abs(vae_row.parameters - ddpm_row.parameters) <= abs(other - ddpm_row.parameters)
    assert view.entropy is not None and view.n == 32
    json.dumps(view.to_dict())
    # the figure's data are the rows
    from ddpm.report.vae import save_view3, view3_bars

    bars = view3_bars(view)
    assert [b["neg_elbo"] for b in bars.values()] == [r.neg_elbo for r in view.rows]
    assert save_view3(view, tmp_path / "v.png").stat().st_size > 0
    assert main(["vae", "compare", str(tmp_path / "vae"), str(tmp_path / "ddpm")]) == 2
    args = ["theory", str(tmp_path / "ddpm"), "--vae", str(tmp_path / "vae"), "--out"]
    assert main([*args, str(tmp_path / "th"), "--json"]) == 0
    doc = json.loads((tmp_path / "th" / "view3.json").read_text())
    assert [r["kind"] for r in doc["rows"]] == ["ddpm", "vae"]
    assert (tmp_path / "th" / "view3.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vae", "train", "--data", "gmm8", "--latent-dim", "0"], "latent_dim must be >= 1"),
        (["vae", "train", "--data", "gmm8", "--cpu-minutes", "-1"], "cpu_minutes must be > 0"),
        (["vae", "evaluate", "nowhere"], "nowhere: no config.json here"),
    ],
)
def test_bad_input_gives_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
