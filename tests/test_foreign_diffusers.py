"""diffusers DDPMPipeline folders: the mapping to a Diffusion checked against diffusers itself.

A tiny UNet2DModel + DDPMScheduler is saved with save_pretrained into a temporary folder; the
loaded model must score like the same network wrapped by hand, and one ddpm reverse step must
equal DDPMScheduler.step given the same noise (float64: to rounding; float32: within the
rounding of diffusers' float32 arithmetic).
"""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.cli.main import main
from ddpm.config import DataConfig
from ddpm.data import DataSpec, load_dataset
from ddpm.errors import ConfigError
from ddpm.foreign.diffusers import diffusers_betas, diffusion_from_scheduler, scheduler_settings
from ddpm.likelihood.evaluate import evaluate
from ddpm.likelihood.ode import OdeConfig, ode_likelihood
from ddpm.loader import load
from ddpm.model import Model
from ddpm.process.continuous import ContinuousSchedule
from ddpm.process.diffusion import Diffusion, Parameterisation
from ddpm.process.rng import KeyedNoise
from ddpm.process.schedule import NoiseSchedule
from ddpm.sampling.ancestral import p_sample

T = 10
EPS32 = float(torch.finfo(torch.float32).eps)
SPEC = DataSpec.from_levels("x", (1, 8, 8), 256)  # one 8x8 grayscale image

# (beta_schedule or trained betas, variance_type, prediction_type): every supported value once.
CASES = [
    ("linear", "fixed_small", "epsilon"),
    ("squaredcos_cap_v2", "fixed_large", "v_prediction"),
    ("scaled_linear", "learned_range", "sample"),
    ("trained", "learned_range", "epsilon"),
]


@pytest.fixture(scope="module", autouse=True)
def _diffusers():
    """diffusers' classes, imported when this file's tests run rather than when the suite is
    collected (1.5 s in every test process)."""
    global DDPMPipeline, DDPMScheduler, UNet2DModel
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel


def scheduler_kwargs(schedule: str, variance: str, prediction: str) -> dict:
    kw = dict(num_train_timesteps=T, variance_type=variance, prediction_type=prediction)
    if schedule == "trained":
        kw["trained_betas"] = np.geomspace(1e-3, 0.2, T).tolist()
    else:
        kw["beta_schedule"] = schedule
    return kw


def tiny_unet(out_mult: int, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)  # diffusers initialises from the global generator
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_mult,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


def save_pipeline(folder: Path, case: tuple[str, str, str]) -> tuple[UNet2DModel, DDPMScheduler]:
    scheduler = DDPMScheduler(**scheduler_kwargs(*case))
    unet = tiny_unet(2 if case[1] == "learned_range" else 1)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return unet, scheduler


def by_hand(unet: UNet2DModel, scheduler: DDPMScheduler):
    """The same network and process wrapped directly from the diffusers objects."""
    variance = {"fixed_small": "small", "fixed_large": "large", "learned_range": "learned"}
    prediction = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
    cfg = scheduler.config
    beta = torch.cat([torch.zeros(1, dtype=torch.float64), scheduler.betas.double()])
    diffusion = Diffusion(
        NoiseSchedule(beta),
        Parameterisation(prediction[cfg.prediction_type], variance[cfg.variance_type]),
        time_map=torch.arange(T + 1) - 1,
    )
    return diffusion, lambda x, t: unet(x, t).sample


@pytest.fixture(params=CASES, ids=["-".join(c) for c in CASES])
def pipeline(request, tmp_path):
    folder = tmp_path / "pipe"
    unet, scheduler = save_pipeline(folder, request.param)
    return folder, unet, scheduler


# --- the process -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_betas_are_diffusers_float32_betas(case):
    kw = scheduler_kwargs(*case)
    expected = DDPMScheduler(**kw).betas
    got = diffusers_betas(scheduler_settings(kw))
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    diffusion, _, _ = diffusion_from_scheduler(kw)
    assert torch.equal(diffusion.schedule.beta[1:], expected.double())  # exact cast
    assert diffusion.net_t(torch.tensor([1, T])).tolist() == [0, T - 1]


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
@pytest.mark.parametrize("clip_sample", [True, False])
def test_one_step_equals_scheduler_step_in_float64(case, clip_sample):
    """Every t, mean and variance: ddpm's p_sample against DDPMScheduler.step with the
    scheduler's arrays in float64 (same formulas, so equal to float64 rounding)."""
    kw = {**scheduler_kwargs(*case), "clip_sample": clip_sample}
    scheduler = DDPMScheduler(**kw)
    scheduler.betas = scheduler.betas.double()
    scheduler.alphas = 1 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    diffusion, clip, _ = diffusion_from_scheduler(kw)
    g = torch.Generator().manual_seed(0)
    channels = diffusion.param.out_mult
    for t in range(1, T + 1):
        xt = 1.5 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
        out = torch.randn(4, channels, 8, 8, generator=g, dtype=torch.float64)
        if channels == 2:
            out[:, 1:] = out[:, 1:].tanh()  # a variance output in [-1, 1]

        def model(x, net_t, t=t, out=out):
            assert net_t.tolist() == [t - 1] * 4  # diffusers' 0-based timestep
            return out

        expected = scheduler.step(out, t - 1, xt, generator=torch.Generator().manual_seed(t))
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t), dtype=xt.dtype)
        got, p = p_sample(Model(diffusion, model, SPEC, clip=clip), xt, t, noise=z)
        torch.testing.assert_close(p.x0_hat, expected.pred_original_sample, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got, expected.prev_sample, rtol=1e-9, atol=1e-12)


def test_one_step_of_the_loaded_model_equals_scheduler_step(pipeline):
    """The saved pipeline through load, in float32 as diffusers runs it. The loaded
    network at step t is exactly the unet at timestep t - 1. diffusers forms 1 - alpha_bar_t from
    a float32 cumprod: its relative rounding error is up to ~(t + 1) eps / (1 - alpha_bar_t),
    which bounds the difference from ddpm's coefficients (float64, cast to float32)."""
    folder, unet, scheduler = pipeline
    m = load(folder)
    g = torch.Generator().manual_seed(1)
    alpha_bar = scheduler.alphas_cumprod.double()
    for t in (1, 2, T // 2, T):
        xt = torch.randn(3, 1, 8, 8, generator=g)
        with torch.no_grad():
            out = unet(xt, t - 1).sample
            tt = torch.full((3,), t)
            assert torch.equal(m.net(xt, m.diffusion.net_t(tt)), out)
            expected = scheduler.step(out, t - 1, xt, generator=torch.Generator().manual_seed(t))
            z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t))
            got, _ = p_sample(m, xt, t, noise=z)
        scale = float(xt.abs().max() + out.abs().max() + z.abs().max())
        tol = 2 * (t + 1) * EPS32 / float(1 - alpha_bar[t - 1]) * scale
        assert float((got - expected.prev_sample).abs().max()) <= tol


def test_sampling_chain_equals_ddpm_pipeline(pipeline, tmp_path, capsys):
    """`ddpm sample DIR --seed 0` draws the same noise in the same order as DDPMPipeline with a
    generator seeded 0: the samples agree to float32 rounding (per-step differences of a few
    1e-6, see above, accumulated over T = 10 steps stay below 1e-4)."""
    folder, unet, scheduler = pipeline
    out = tmp_path / "s.png"
    assert main(["sample", str(folder), "-n", "3", "--seed", "0", "--out", str(out)]) == 0
    ours = np.load(tmp_path / "s.npy") / 255  # raw 8-bit units -> [0, 1]
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        batch_size=3,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=T,
        output_type="np",
    ).images  # [N, H, W, C] in [0, 1]
    np.testing.assert_allclose(ours.transpose(0, 2, 3, 1), theirs, atol=1e-4)


# --- evaluation --------------------------------------------------------------------------------
def test_cli_evaluate_equals_the_model_wrapped_by_hand(pipeline, tmp_path, capsys, monkeypatch):
    folder, unet, scheduler = pipeline

    def no_network(*args, **kwargs):
        raise AssertionError("the loader tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    n = 6
    args = ["evaluate", str(folder), "--data", "digits", "-n", str(n), "--json"]
    assert main([*args, "--out", str(tmp_path / "ev")]) == 0
    report = json.loads(capsys.readouterr().out)
    diffusion, model = by_hand(unet, scheduler)
    data = load_dataset(DataConfig(name="digits"))
    clip = (-1.0, 1.0) if scheduler.config.clip_sample else None  # p_theta as ddpm samples it
    with torch.no_grad():
        ev = evaluate(
            Model(diffusion, model, data.spec, clip=clip),
            data.test[:n],
            generator=KeyedNoise(0, torch.arange(n)),
        )
    assert report["n"] == n and report["T"] == T
    assert report["neg_elbo"] == pytest.approx(ev.neg_elbo, rel=1e-6)
    assert report["bits_per_dim"] == pytest.approx(ev.bits_per_dim, rel=1e-6)
    np.testing.assert_allclose(report["per_timestep"], ev.per_timestep, rtol=1e-6)


def test_decoder_variance_is_ddpm_convention(pipeline):
    """At t = 1 diffusers clamps beta_tilde_1 = 0 to 1e-20 (fixed_small) or uses beta_1
    (fixed_large); the evaluation's decoder uses beta_tilde_2 for both fixed variances."""
    folder, _, scheduler = pipeline
    s = load(folder).diffusion.schedule
    if scheduler.config.variance_type == "fixed_small":
        assert float(scheduler._get_variance(0)) == pytest.approx(1e-20)
        assert float(s.sigma2_small[1]) == pytest.approx(float(s.beta_tilde[2]), rel=1e-12)
    if scheduler.config.variance_type == "fixed_large":
        assert float(scheduler._get_variance(0)) == pytest.approx(float(s.beta[1]), rel=1e-6)
        assert float(s.sigma2_large[1]) == pytest.approx(float(s.beta_tilde[2]), rel=1e-12)


# --- the jobs that take any model: the ODE, the report, view 3 --------------------------------
N = 4  # digits test examples scored


def eval_json(folder: Path, out: Path, *extra: str) -> dict:
    """``ddpm evaluate FOLDER --data digits -n N`` (exit 0): its eval_test.json."""
    args = ["evaluate", str(folder), "--data", "digits", "-n", str(N), *extra]
    assert main([*args, "--out", str(out)]) == 0
    return json.loads((out / "eval_test.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_continuous_schedule_is_that_of_the_betas(case, tmp_path):
    """linear: the straight line through T beta_1 and T beta_T of diffusers' float32 betas;
    squaredcos_cap_v2: [ND21]'s cosine, whose alpha_bar(t / T) is diffusers' alphas_cumprod at
    every step before the capped last one (to its float32 cumprod's rounding, (t + 1) eps);
    scaled_linear and trained betas: none."""
    folder = tmp_path / "pipe"
    _, scheduler = save_pipeline(folder, case)
    c = load(folder).continuous
    betas = scheduler.betas
    if case[0] == "linear":
        assert c == ContinuousSchedule("linear", T, T * float(betas[0]), T * float(betas[-1]))
    elif case[0] == "squaredcos_cap_v2":
        assert c.name == "cosine" and c.T == T
        t = torch.arange(1, T, dtype=torch.float64)
        torch.testing.assert_close(
            c.alpha_bar(t / T),
            scheduler.alphas_cumprod[: T - 1].double(),
            rtol=(T + 1) * EPS32,
            atol=0,
        )
    else:
        assert c is None


@pytest.mark.parametrize("case", CASES[:2], ids=["-".join(c) for c in CASES[:2]])
def test_cli_ode_likelihood_equals_ode_likelihood_of_the_loaded_model(case, tmp_path, capsys):
    """`ddpm evaluate DIR --ode` scores the flow of the diffusers schedule's continuous form:
    the same number as ode_likelihood on load(DIR) with the same keyed noise (seed 0)."""
    folder = tmp_path / "pipe"
    save_pipeline(folder, case)
    doc = eval_json(folder, tmp_path / "ev", "--ode", "--ode-rtol", "1e-4", "--ode-atol", "1e-4")
    ode = doc["ode"]
    assert ode is not None and ode["n"] == N
    assert math.isfinite(ode["neg_log_likelihood"]) and math.isfinite(ode["bits_per_dim"])
    assert ode["schedule"] == {"linear": "linear", "squaredcos_cap_v2": "cosine"}[case[0]]
    data = load_dataset(DataConfig(name="digits"))
    model = load(folder).on(data.spec)
    res = ode_likelihood(model, data.test[:N], OdeConfig(rtol=1e-4, atol=1e-4), KeyedNoise(0))
    assert ode["neg_log_likelihood"] == pytest.approx(res.neg_log_likelihood, rel=1e-12)
    assert ode["bits_per_dim"] == pytest.approx(res.bits_per_dim, rel=1e-12)
    assert ode["nfe"] == res.nfe


def test_report_of_a_diffusers_folder_shows_its_evaluation(tmp_path, capsys):
    """`ddpm report DIR --data digits` evaluates the folder's model on that data and shows the
    bits/dim `ddpm evaluate` gives; without --data it says to give the data, in one line."""
    folder = tmp_path / "pipe"
    save_pipeline(folder, CASES[0])
    ev = eval_json(folder, tmp_path / "ev")
    assert main(["report", str(folder), "--data", "digits", "-n", str(N)]) == 0
    assert f"evaluated n = {N}" in capsys.readouterr().out
    page = (folder / "report.html").read_text()
    bpd = f"<td>bits/dim</td><td>{ev['bits_per_dim']:.4f} ± {ev['bits_per_dim_se']:.4f}</td>"
    assert bpd in page
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data" in err, err
    assert (folder / "report.html").read_text() == page  # left as it was


def test_view3_of_a_diffusers_folder_beside_a_vae(tmp_path, capsys):
    """`ddpm vae compare DIR VAE_RUN`: the DDPM row is the -ELBO `ddpm evaluate DIR` gives on
    the same n test examples of the VAE's data (seed 0), the VAE row that of
    `ddpm vae evaluate`."""
    folder, vae, n = tmp_path / "pipe", tmp_path / "vae", 6
    save_pipeline(folder, CASES[0])
    vae_args = ["vae", "train", "--data", "digits", "--latent-dim", "2", "--channels", "4"]
    vae_args += ["--max-steps", "2", "--batch-size", "16", "--warmup", "1", "--num-samples", "4"]
    assert main([*vae_args, "--quiet", "--out", str(vae)]) == 0
    args = ["vae", "compare", str(folder), str(vae), "-n", str(n), "--vae-iw", "1"]
    assert main([*args, "--out", str(tmp_path / "v3"), "--json"]) == 0
    view = json.loads((tmp_path / "v3" / "view3.json").read_text())
    assert [r["kind"] for r in view["rows"]] == ["ddpm", "vae"] and view["n"] == n
    ddpm_row, vae_row = view["rows"]
    args = ["vae", "evaluate", str(vae), "-n", str(n), "--iw", "1", "--json"]
    assert main([*args, "--out", str(tmp_path / "vev")]) == 0
    vev = json.loads((tmp_path / "vev" / "eval_test.json").read_text())
    assert vae_row["neg_elbo"] == pytest.approx(vev["neg_elbo"], rel=1e-12)
    args = ["evaluate", str(folder), "--data", "digits", "-n", str(n)]
    assert main([*args, "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "eval_test.json").read_text())
    assert ddpm_row["neg_elbo"] == pytest.approx(ev["neg_elbo"], rel=1e-12)
    assert ddpm_row["bits_per_dim"] == pytest.approx(ev["bits_per_dim"], rel=1e-12)


# --- bad input: one line naming the key --------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [
        ("thresholding", True),
        ("rescale_betas_zero_snr", True),
        ("variance_type", "learned"),
        ("variance_type", "fixed_small_log"),
        ("beta_schedule", "sigmoid"),
        ("prediction_type", "flow"),
        ("timestep_spacing", "karras"),
        ("steps_offset", 1),
        ("num_train_timesteps", 0),
        ("some_new_setting", 1),
    ],
)
def test_unsupported_scheduler_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        diffusion_from_scheduler({"num_train_timesteps": T, key: value})


def test_unsupported_setting_is_one_line_from_the_cli(tmp_path, capsys):
    folder = tmp_path / "pipe"
    save_pipeline(folder, CASES[0])
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "thresholding": True}))
    assert main(["evaluate", str(folder), "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "thresholding" in err


def test_diffusers_folder_needs_data_of_its_shape(tmp_path, capsys):
    folder = tmp_path / "pipe"
    save_pipeline(folder, CASES[0])
    assert main(["evaluate", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data" in err
    assert main(["evaluate", str(folder), "--data", "gmm8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(2,)" in err and "(1, 8, 8)" in err


def test_output_channels_must_fit_the_variance(tmp_path, capsys):
    folder = tmp_path / "pipe"
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type="learned_range")
    DDPMPipeline(unet=tiny_unet(1), scheduler=scheduler).save_pretrained(folder)
    assert main(["sample", str(folder), "-n", "2", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out_channels" in err


def test_without_diffusers_one_line_says_how_to_install(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "pipe"
    save_pipeline(folder, CASES[0])
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now fails
    for cmd in (["evaluate", str(folder), "--data", "digits"], ["sample", str(folder)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and 'pip install -e ".[diffusers]"' in err
