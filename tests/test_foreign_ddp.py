"""denoising-diffusion-pytorch models: the mapping checked against that library's formulas.

The package needs torchvision, whose PyPI wheels for this torch are CUDA builds that do not load
beside torch 2.13.0+cpu, so the package is usually not importable here. Most tests therefore use
a stand-in ``GaussianDiffusion`` written in this file: the same attributes and float32 buffers,
computed from the library's formulas (its three beta schedules, predict_start_from_noise /
_from_v, q_posterior), and a tiny Unet with its call signature. The checkpoint path runs on the
stand-in too (``from_checkpoint``, and ``ddpm.load`` / the command line with the package import
replaced). The tests at the end use the real package where it imports, and skip otherwise.
"""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch
from helpers import one_line_error, run_cli
from torch import nn

import ddpm
from ddpm.data import DataSpec
from ddpm.errors import CheckpointError, ConfigError, DataError
from ddpm.foreign import denoising_diffusion_pytorch as ddp
from ddpm.likelihood.elbo import ElboTerms, elbo_terms
from ddpm.loader import load
from ddpm.model import Model, p_mean_var
from ddpm.process.continuous import ContinuousSchedule
from ddpm.process.diffusion import Diffusion, Parameterisation
from ddpm.process.rng import KeyedNoise
from ddpm.process.schedule import NoiseSchedule

T = 25  # > 20: their linear schedule's beta_T = 0.02 * 1000 / T stays below 1
EPS32 = float(torch.finfo(torch.float32).eps)
EPS64 = float(torch.finfo(torch.float64).eps)
OBJECTIVES = {"pred_noise": "eps", "pred_x0": "x0", "pred_v": "v"}


# --- the library's formulas, written out ---------------------------------------------------------
def linear_betas(T: int) -> torch.Tensor:
    scale = 1000 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


def _betas_of(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clip(0, 0.999)


def cosine_betas(T: int, s: float = 0.008) -> torch.Tensor:
    t = torch.linspace(0, T, T + 1, dtype=torch.float64) / T
    return _betas_of(torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2)


def sigmoid_betas(T: int, start: float = -3, end: float = 3, tau: float = 1) -> torch.Tensor:
    t = torch.linspace(0, T, T + 1, dtype=torch.float64) / T
    v_start, v_end = (torch.tensor(v / tau).sigmoid() for v in (start, end))
    return _betas_of((-((t * (end - start) + start) / tau).sigmoid() + v_end) / (v_end - v_start))


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}


def their_arrays(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The arrays GaussianDiffusion.__init__ derives from betas (float64 in, float64 out)."""
    alphas = 1 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * alphas.sqrt() / (1 - ac),
        "loss_weight": torch.ones_like(betas),
    }


def their_p_mean(objective: str, a: dict, out: torch.Tensor, x: torch.Tensor, k: torch.Tensor):
    """(model_mean, log variance, x_start) of their p_mean_variance(x, k) given the Unet's
    output: model_predictions, the clamp to [-1, 1], q_posterior."""

    def at(name):
        return a[name][k].reshape(-1, *[1] * (x.ndim - 1))

    if objective == "pred_noise":
        x_start = at("sqrt_recip_alphas_cumprod") * x - at("sqrt_recipm1_alphas_cumprod") * out
    elif objective == "pred_x0":
        x_start = out
    else:
        x_start = at("sqrt_alphas_cumprod") * x - at("sqrt_one_minus_alphas_cumprod") * out
    x_start = x_start.clamp(-1, 1)
    mean = at("posterior_mean_coef1") * x_start + at("posterior_mean_coef2") * x
    return mean, at("posterior_log_variance_clipped"), x_start


# --- stand-ins: the attributes and buffers of the library's classes ------------------------------
class Unet(nn.Module):
    """A tiny network with their Unet's call ``model(x, time, x_self_cond=None)``."""

    def __init__(self, dim: int = 4, channels: int = 1, self_condition: bool = False) -> None:
        super().__init__()
        self.channels, self.out_dim, self.self_condition = channels, channels, self_condition
        self.random_or_learned_sinusoidal_cond = False
        self.inp = nn.Conv2d(channels, dim, 3, padding=1)
        self.time = nn.Linear(2, dim)
        self.out = nn.Conv2d(dim, channels, 3, padding=1)

    def forward(self, x, time, x_self_cond=None):
        emb = torch.stack([(time * 0.3).sin(), (time * 0.05).cos()], dim=1).to(x.dtype)
        return self.out(torch.tanh(self.inp(x) + self.time(emb)[:, :, None, None]))


class GaussianDiffusion(nn.Module):
    """The attributes and float32 buffers of their GaussianDiffusion."""

    def __init__(self, model, *, image_size, timesteps=1000, objective="pred_v",
                 beta_schedule="sigmoid", auto_normalize=True) -> None:  # fmt: skip
        super().__init__()
        self.model, self.channels = model, model.channels
        self.self_condition = model.self_condition
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        assert objective in OBJECTIVES, "objective must be pred_noise, pred_x0 or pred_v"
        self.objective = objective
        betas = SCHEDULES[beta_schedule](timesteps)
        self.num_timesteps = len(betas)
        for name, value in their_arrays(betas).items():
            self.register_buffer(name, value.to(torch.float32))
        self.normalize = (lambda img: img * 2 - 1) if auto_normalize else (lambda img: img)


def tiny(objective="pred_noise", schedule="linear", seed=0, **kw) -> GaussianDiffusion:
    torch.manual_seed(seed)  # nn initialises from the global generator
    unet = Unet(**{k: v for k, v in kw.items() if k in ("self_condition", "channels")})
    kw = {k: v for k, v in kw.items() if k not in ("self_condition", "channels")}
    gd = GaussianDiffusion(unet, image_size=8, timesteps=T, objective=objective,
                           beta_schedule=schedule, **kw)  # fmt: skip
    return gd.eval()


# --- the process -------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_betas_are_the_float32_buffer_and_named_schedules_keep_their_continuous_form(schedule):
    gd = tiny(schedule=schedule)
    model = ddp.from_denoising_diffusion_pytorch(gd)
    assert torch.equal(model.diffusion.schedule.beta[1:], gd.betas.double())  # exact cast
    if schedule == "sigmoid":
        assert model.continuous is None  # no continuous form: no ODE
    else:
        assert model.continuous == ContinuousSchedule.of(schedule, model.diffusion.schedule)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_their_linear_and_cosine_schedules_are_ddpms_to_float32_precision(schedule):
    for steps in (50, 1000):  # linear: T > 20 (for T <= 20 their beta_T reaches 1)
        theirs = SCHEDULES[schedule](steps).float().double()
        named = NoiseSchedule.from_name(schedule, steps).beta[1:]
        assert ((theirs - named).abs() <= EPS32 * named).all()


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_p_theta_is_their_p_mean_variance(objective, schedule):
    """Every t: ddpm's mean, x0_hat and variance against their formulas in float64 on the same
    (float32) betas. ddpm forms 1 - alpha_bar as -expm1(sum log1p(-beta)), they subtract: the
    two differ by up to ~eps64 / beta_1 relative, the tolerance below (times 64)."""
    gd = tiny(objective, schedule)
    model = ddp.from_denoising_diffusion_pytorch(gd)
    assert model.diffusion.param == Parameterisation(OBJECTIVES[objective], "small")
    assert model.clip == (-1.0, 1.0)
    a = their_arrays(gd.betas.double())
    g = torch.Generator().manual_seed(1)
    x = 1.5 * torch.randn(T, 1, 8, 8, generator=g, dtype=torch.float64)
    out = 2 * torch.randn(T, 1, 8, 8, generator=g, dtype=torch.float64)  # some clamp to +-1
    k = torch.arange(T)  # their 0-based timestep, ddpm's t - 1
    seen = []
    probe = Model(model.diffusion, lambda x_, t_: seen.append(t_) or out, model.spec, model.clip)
    p = p_mean_var(probe, x, k + 1)
    assert torch.equal(seen[0], k)
    mean, log_var, x_start = their_p_mean(objective, a, out, x, k)
    tol = 64 * EPS64 / float(gd.betas[0])
    torch.testing.assert_close(p.x0_hat, x_start, rtol=tol, atol=tol)
    torch.testing.assert_close(p.mean, mean, rtol=tol, atol=tol)
    # t >= 2: the same posterior variance; t = 1: theirs is log(1e-20), ddpm's beta_tilde_2
    torch.testing.assert_close(p.log_var[1:], log_var[1:].expand_as(x[1:]), rtol=tol, atol=tol)
    assert float(log_var[0]) == pytest.approx(math.log(1e-20))
    sigma2_1 = model.diffusion.schedule.beta_tilde[2]
    assert torch.allclose(p.log_var[0], sigma2_1.log(), rtol=tol)


def test_the_v_convention_is_theirs():
    """Their predict_v(x_start, noise) = sqrt(ab) noise - sqrt(1 - ab) x_start is ddpm's v."""
    from ddpm.process.forward import v_from_x0_eps

    gd = tiny("pred_v")
    a = their_arrays(gd.betas.double())
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, T, 1, 8, 8, generator=g, dtype=torch.float64)
    k = torch.arange(T)
    theirs = (
        a["sqrt_alphas_cumprod"][k, None, None, None] * eps
        - a["sqrt_one_minus_alphas_cumprod"][k, None, None, None] * x0
    )
    schedule = ddp.from_denoising_diffusion_pytorch(gd).diffusion.schedule
    tol = 64 * EPS64 / float(gd.betas[0])
    torch.testing.assert_close(v_from_x0_eps(schedule, x0, k + 1, eps), theirs, rtol=tol, atol=tol)


def test_the_network_sees_their_int64_index_and_the_unet_output():
    gd = tiny()
    model = ddp.from_denoising_diffusion_pytorch(gd)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([1, 5, T])
    net_t = model.diffusion.net_t(t)
    assert net_t.dtype == torch.long and net_t.tolist() == [0, 4, T - 1]
    assert torch.equal(model.net(x, net_t), gd.model(x, t - 1))
    assert model.shape == (1, 8, 8) and model.levels == 256 and model.source.kind == ddp.NAME


def test_data_can_be_given_and_must_have_the_shape():
    gd = tiny()
    digits = DataSpec.from_levels("digits", (1, 8, 8), 17)
    assert ddp.from_denoising_diffusion_pytorch(gd, data=digits).spec == digits
    with pytest.raises(DataError, match=r"shape \(1, 8, 8\).*gives \(3, 8, 8\)"):
        ddp.from_denoising_diffusion_pytorch(gd, DataSpec.from_levels("x", (3, 8, 8), 256))


# --- refusals ----------------------------------------------------------------------------------
def test_a_model_without_auto_normalize_is_refused():
    with pytest.raises(ConfigError, match="auto_normalize = False is not supported.*\\[0, 1\\]"):
        ddp.from_denoising_diffusion_pytorch(tiny(auto_normalize=False))


def test_a_self_conditioned_model_is_refused():
    with pytest.raises(ConfigError, match="self_condition = True is not supported"):
        ddp.from_denoising_diffusion_pytorch(tiny(self_condition=True))


def test_an_unknown_objective_and_other_classes_are_refused():
    gd = tiny()
    gd.objective = "pred_score"
    with pytest.raises(ConfigError, match="objective 'pred_score' is not supported"):
        ddp.from_denoising_diffusion_pytorch(gd)

    class LearnedGaussianDiffusion(GaussianDiffusion):
        pass

    other = LearnedGaussianDiffusion(Unet(), image_size=8, timesteps=T)
    with pytest.raises(ConfigError, match="LearnedGaussianDiffusion is not supported"):
        ddp.from_denoising_diffusion_pytorch(other)


def test_their_linear_schedule_of_20_steps_or_fewer_is_refused():
    gd = GaussianDiffusion(Unet(), image_size=8, timesteps=20, beta_schedule="linear")
    with pytest.raises(ConfigError, match="beta at timestep 19 is 1.0, outside"):
        ddp.from_denoising_diffusion_pytorch(gd)


def test_buffers_that_disagree_are_refused():
    gd = tiny(schedule="cosine")
    gd.alphas_cumprod[3] *= 1 + 1e-4  # far beyond float32 rounding
    with pytest.raises(ConfigError, match="alphas_cumprod buffer is not the cumulative product"):
        ddp.from_denoising_diffusion_pytorch(gd)


# --- the checkpoint ----------------------------------------------------------------------------
def save_checkpoint(path, raw: nn.Module, ema: nn.Module | None, step: int = 7, **extra):
    """What Trainer.save writes: step, model, opt, ema (ema_pytorch's EMA state dict), scaler,
    version."""
    ckpt = {
        "step": step,
        "model": raw.state_dict(),
        "opt": torch.optim.Adam(raw.parameters()).state_dict(),
        "scaler": None,
        "version": "2.3.4",
        **extra,
    }
    if ema is not None:
        ckpt["ema"] = {
            "initted": torch.tensor(True),
            "step": torch.tensor(step),
            **{f"online_model.{k}": v for k, v in raw.state_dict().items()},
            **{f"ema_model.{k}": v for k, v in ema.state_dict().items()},
        }
    torch.save(ckpt, path)
    return path


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def checkpoint(tmp_path):
    raw, ema = tiny(seed=0), tiny(seed=1)
    return save_checkpoint(tmp_path / "model-7.pt", raw, ema), raw, ema


def test_the_ema_weights_are_read_by_default_and_the_raw_ones_on_request(checkpoint):
    path, raw, ema = checkpoint
    model = ddp.from_checkpoint(path, tiny(seed=2))
    assert same_weights(model.net.unet, ema.model) and not same_weights(model.net.unet, raw.model)
    assert model.source.step == 7 and model.source.weights == "EMA weights of step 7"
    assert model.source.path == path and model.name == "model-7"
    model = ddp.from_checkpoint(path, tiny(seed=2), weights="raw")
    assert same_weights(model.net.unet, raw.model)
    assert model.source.weights == "training weights of step 7"


def test_without_ema_weights_the_training_weights_are_read_and_said(tmp_path):
    raw = tiny(seed=0)
    path = save_checkpoint(tmp_path / "model-3.pt", raw, None, step=3)
    model = ddp.from_checkpoint(path, tiny(seed=2))
    assert same_weights(model.net.unet, raw.model)
    assert model.source.weights == "training weights of step 3 (the file holds no EMA weights)"
    never = save_checkpoint(tmp_path / "model-4.pt", raw, tiny(seed=1), step=4)
    ckpt = torch.load(never, weights_only=True)
    ckpt["ema"]["initted"] = torch.tensor(False)  # EMA.update never ran: initial weights
    torch.save(ckpt, never)
    model = ddp.from_checkpoint(never, tiny(seed=2))
    assert same_weights(model.net.unet, raw.model)
    assert model.source.weights == "training weights of step 4 (its EMA was never updated)"
    bare = tmp_path / "bare.pt"
    torch.save(raw.state_dict(), bare)  # a GaussianDiffusion state dict alone
    assert same_weights(ddp.from_checkpoint(bare, tiny(seed=2)).net.unet, raw.model)


def test_the_loaded_model_scores_like_the_model_built_by_hand(checkpoint):
    path, _, ema = checkpoint
    model = ddp.from_checkpoint(path, tiny(seed=2))
    beta = torch.cat([torch.zeros(1, dtype=torch.float64), ema.betas.double()])
    diffusion = Diffusion(NoiseSchedule(beta), Parameterisation("eps", "small"),
                          torch.arange(T + 1) - 1)  # fmt: skip
    hand = Model(diffusion, lambda x, t: ema.model(x, t), model.spec, (-1.0, 1.0))
    x0 = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, b = elbo_terms(model, x0, KeyedNoise(0)), elbo_terms(hand, x0, KeyedNoise(0))
    for name in ElboTerms.FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_tensors_that_do_not_match_are_named_in_one_line(tmp_path):
    raw = tiny()
    state = raw.state_dict()
    state["model.extra.weight"] = state.pop("model.out.weight")
    path = tmp_path / "model-1.pt"
    torch.save({"step": 1, "model": state}, path)
    with pytest.raises(CheckpointError) as e:
        ddp.from_checkpoint(path, tiny(), weights="raw")
    msg = str(e.value)
    assert "missing 'model.out.weight'" in msg and "unexpected 'model.extra.weight'" in msg
    assert len(msg.splitlines()) == 1 and e.value.params == ("flags",)
    torch.save({"step": 1, "model": tiny(objective="pred_noise").state_dict()}, path)
    unet = Unet(dim=6)
    wider = GaussianDiffusion(unet, image_size=8, timesteps=T, beta_schedule="linear")
    with pytest.raises(CheckpointError, match="'model.inp.weight' has shape .4, 1, 3, 3. in the"):
        ddp.from_checkpoint(path, wider, weights="raw")


def test_betas_of_other_settings_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "model-1.pt", tiny(schedule="cosine"), None)
    with pytest.raises(CheckpointError, match="betas are not those of the diffusion settings"):
        ddp.from_checkpoint(path, tiny(schedule="linear"))


class Pickled:
    """Any object: unpickling it could run code, so weights_only refuses it."""


def test_a_file_holding_pickled_objects_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "model-1.pt", tiny(), None, trainer=Pickled())
    with pytest.raises(CheckpointError, match=r"holds a pickled [\w.]*Pickled, and only tensors"):
        ddp.from_checkpoint(path, tiny())
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        ddp.from_checkpoint(tmp_path / "junk.pt", tiny())
    torch.save({"step": 1, "weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'model' state dict"):
        ddp.from_checkpoint(tmp_path / "other.pt", tiny())


# --- flags, the package, ddpm.load and the command line ------------------------------------------
FLAGS = json.dumps(
    {"unet": {"dim": 4}, "diffusion": {"image_size": 8, "timesteps": T,
                                       "objective": "pred_noise", "beta_schedule": "linear"}}
)  # fmt: skip


@pytest.mark.parametrize(
    "text, words",
    [
        ("{unet: 1}", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"unet": {}, "diffusion": {}, "trainer": {}}', "unknown key 'trainer'"),
        ('{"unet": {}}', "'diffusion' must be a JSON object"),
        ('{"unet": [], "diffusion": {}}', "'unet' must be a JSON object"),
        ('{"unet": {}, "diffusion": {"model": 1}}', "must not hold 'model'"),
    ],
)
def test_bad_flags_are_named(text, words):
    with pytest.raises(ConfigError) as e:
        ddp.parse_flags(text)
    assert words in str(e.value) and e.value.params == ("flags",)


@pytest.fixture
def stand_in_package(monkeypatch):
    """The package import replaced by the stand-ins of this file."""
    package = types.SimpleNamespace(Unet=Unet, GaussianDiffusion=GaussianDiffusion)
    monkeypatch.setattr(ddp, "import_package", lambda: package)


def test_load_builds_the_model_of_the_flags(stand_in_package, checkpoint):
    path, _, ema = checkpoint
    model = load(path, source="denoising-diffusion-pytorch", flags=FLAGS)
    assert same_weights(model.net.unet, ema.model) and model.source.step == 7
    with pytest.raises(ConfigError, match="give flags") as e:
        load(path, source="denoising-diffusion-pytorch")
    assert e.value.params == ("flags",)
    bad = FLAGS.replace('"dim": 4', '"dims": 4')
    with pytest.raises(ConfigError, match=r"flags: Unet\(\*\*flags\['unet'\]\) fails: .*dims"):
        load(path, source="denoising-diffusion-pytorch", flags=bad)
    bad = FLAGS.replace("pred_noise", "pred_eps")
    with pytest.raises(ConfigError, match=r"GaussianDiffusion\(unet, \*\*flags\['diffusion'\]\)"):
        load(path, source="denoising-diffusion-pytorch", flags=bad)


def test_the_command_line_scores_a_checkpoint(stand_in_package, checkpoint, capsys):
    path = checkpoint[0]
    args = ["evaluate", path, "--from", "denoising-diffusion-pytorch", "--flags", FLAGS,
            "--data", "digits", "-n", "4", "--json"]  # fmt: skip
    assert run_cli(*args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["source"] == ddp.NAME and math.isfinite(out["bits_per_dim"])


def test_without_the_package_one_line_says_how_to_install_it(monkeypatch, checkpoint, capsys):
    monkeypatch.setitem(sys.modules, "denoising_diffusion_pytorch", None)  # import fails
    with pytest.raises(ConfigError, match="denoising-diffusion-pytorch is not installed: pip"):
        load(checkpoint[0], source="denoising-diffusion-pytorch", flags=FLAGS)
    err = one_line_error(
        capsys, "evaluate", checkpoint[0], "--from", "denoising-diffusion-pytorch",
        "--flags", FLAGS, "--data", "digits",
    )  # fmt: skip
    assert "not installed" in err


def test_the_name_is_exported():
    assert ddpm.from_denoising_diffusion_pytorch is ddp.from_denoising_diffusion_pytorch


# --- the real package, where it imports ----------------------------------------------------------
# measured on this project's machines: `pip install denoising_diffusion_pytorch` beside torch
# 2.13.0+cpu replaces torch by a CUDA 2.14.1 (torchvision 0.29.1 pins it); with torchvision==0.28.0
# pinned it keeps torch, but torchvision's _C.so links libtorch_cuda.so, which the +cpu build lacks,
# so `import torchvision` fails ("operator torchvision::nms does not exist")
NOT_HERE = "denoising_diffusion_pytorch does not import beside this torch"


def real_package():
    try:
        import denoising_diffusion_pytorch
    except ImportError as e:
        pytest.skip(f"{NOT_HERE}: {e} (it needs a torchvision built for this torch)")
    except (RuntimeError, OSError) as e:  # torchvision's CUDA wheel beside torch +cpu
        pytest.skip(f"{NOT_HERE}: {str(e).splitlines()[0]}")
    return denoising_diffusion_pytorch


def real_tiny(package, objective: str, schedule: str):
    torch.manual_seed(0)
    unet = package.Unet(dim=8, dim_mults=(1, 2), channels=1)
    gd = package.GaussianDiffusion(unet, image_size=8, timesteps=T, objective=objective,
                                   beta_schedule=schedule)  # fmt: skip
    return gd.eval()


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_real_buffers_are_the_formulas_of_this_file(schedule):
    package = real_package()
    gd = real_tiny(package, "pred_v", schedule)
    for name, value in their_arrays(SCHEDULES[schedule](T)).items():
        if name != "loss_weight":  # training only
            torch.testing.assert_close(getattr(gd, name), value.float(), rtol=EPS32, atol=0)
    assert (gd.objective, gd.num_timesteps, gd.image_size) == ("pred_v", T, (8, 8))
    assert (gd.channels, gd.self_condition, type(gd).__name__) == (1, False, "GaussianDiffusion")
    assert torch.equal(gd.normalize(torch.tensor([0.0, 1.0])), torch.tensor([-1.0, 1.0]))


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_real_p_theta_equals_their_p_mean_variance(objective, schedule):
    """Their float32 p_mean_variance against ddpm's (float64 schedule, float32 network). Their
    x_start and mean are a few float32 operations on values bounded by
    s_t = (1 + max |x_t|) / sqrt(alpha_bar_t), each rounding by eps32 / 2 of it: within
    8 eps32 s_t. log sigma^2 (t >= 2): float32 roundings of |log sigma^2| and of the betas."""
    package = real_package()
    gd = real_tiny(package, objective, schedule)
    model = ddpm.from_denoising_diffusion_pytorch(gd)
    x = torch.randn(T, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    k = torch.arange(T)
    with torch.no_grad():
        mean, _, log_var, x_start = gd.p_mean_variance(x, k, clip_denoised=True)
        p = p_mean_var(model, x, k + 1)
    s = gd.sqrt_recip_alphas_cumprod.view(-1, 1, 1, 1) * (
        1 + x.abs().amax(dim=(1, 2, 3), keepdim=True)
    )
    assert ((p.x0_hat - x_start).abs() <= 8 * EPS32 * s).all()
    assert ((p.mean - mean).abs() <= 8 * EPS32 * s).all()
    torch.testing.assert_close(
        p.log_var[1:], log_var[1:].expand_as(x[1:]), rtol=4 * EPS32, atol=4 * EPS32
    )


def test_real_trainer_checkpoint_loads_with_its_ema(tmp_path):
    package = real_package()
    from ema_pytorch import EMA

    flags = {"unet": {"dim": 8, "dim_mults": [1, 2], "channels": 1},
             "diffusion": {"image_size": 8, "timesteps": T, "beta_schedule": "linear"}}  # fmt: skip
    torch.manual_seed(0)
    gd = package.GaussianDiffusion(package.Unet(**flags["unet"]), **flags["diffusion"])
    ema = EMA(gd, beta=0.9, update_every=1, update_after_step=0)
    with torch.no_grad():
        for p in gd.parameters():
            p.add_(0.01)
    ema.update()
    path = save_checkpoint(tmp_path / "model-1.pt", gd, None, step=1)
    ckpt = torch.load(path, weights_only=True)
    ckpt["ema"] = ema.state_dict()
    torch.save(ckpt, path)
    model = load(path, source="denoising-diffusion-pytorch", flags=json.dumps(flags))
    assert same_weights(model.net.unet, ema.ema_model.model)
    assert model.continuous == ContinuousSchedule.of("linear", model.diffusion.schedule)
