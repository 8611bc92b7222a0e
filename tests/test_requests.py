"""Job requests (ddpm.requests): JSON round trips, bad values refused naming the field, and the
defaults of the command line's parsers."""

from __future__ import annotations

import json

import pytest

from ddpm.config import OdeConfig
from ddpm.errors import ConfigError
from ddpm.requests import (
    SAMPLERS,
    EvaluationRequest,
    QualityRequest,
    SamplingRequest,
    TheoryRequest,
    VaeEvaluationRequest,
)

QUALITY = QualityRequest(samples=50, seed=3, classifier_dir="/tmp/classifier")
ODE = OdeConfig(
    rtol=1e-4, atol=1e-6, method="DOP853", divergence="hutchinson", probes=4, s_min=0.01
)

REQUESTS = [
    QualityRequest(),
    QUALITY,
    EvaluationRequest(),
    EvaluationRequest(
        data="gmm8",
        split="train",
        n=20,
        estimator="both",
        mc_timesteps=8,
        iw=(1, 4, 16),
        clip=True,
        steps=("10", "25"),
        spacing="trailing",
        samplers=("ddim",),
        eta=0.5,
        ode=ODE,
        quality=QUALITY,
        seed=7,
        max_batch=128,
    ),  # fmt: skip
    EvaluationRequest(estimator="mc", mc_timesteps=3, steps=("10,15,20", "ddim5"), clip=False),
    SamplingRequest(),
    SamplingRequest(
        n=16,
        seed=2,
        sampler="ddim",
        eta=0.25,
        steps="50",
        spacing="leading",
        clip=False,
        trajectory=True,
        frames=4,
        quality=QUALITY,
    ),  # fmt: skip
    TheoryRequest(),
    TheoryRequest(
        T=(10, 100),
        schedule="cosine",
        variance=("small", "optimal"),
        n=40,
        iw=(),
        seed=5,
        steps="5",
        spacing="linspace",
        ode=ODE,
        dim=3,
        mean=0.3,
        std=1.5,
    ),  # fmt: skip
    VaeEvaluationRequest(),
    VaeEvaluationRequest(
        split="train",
        n=30,
        iw=(1, 8),
        z_samples=4,
        seed=1,
        max_batch=64,
        ddpm_iw=(1, 2),
        ddpm_cpu_seconds=12.5,
    ),  # fmt: skip
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_requests_round_trip_through_json(request_):
    cls = type(request_)
    assert cls.from_dict(request_.to_dict()) == request_
    back = cls.from_json(request_.to_json())  # tuples come back from JSON lists
    assert back == request_
    assert json.loads(back.to_json()) == json.loads(request_.to_json())


def test_nested_requests_come_back_as_their_types():
    r = EvaluationRequest.from_json(REQUESTS[3].to_json())
    assert isinstance(r.quality, QualityRequest) and isinstance(r.ode, OdeConfig)
    assert isinstance(r.iw, tuple) and isinstance(r.steps, tuple) and isinstance(r.samplers, tuple)
    assert r.quality == QUALITY and r.ode == ODE


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (EvaluationRequest, {"n": 0}, "n must be an integer >= 1 (got 0)"),
        (EvaluationRequest, {"split": "valid"}, "unknown split 'valid'"),
        (EvaluationRequest, {"estimator": "mean"}, "unknown estimator 'mean'"),
        (EvaluationRequest, {"estimator": "mc"}, "estimator 'mc' with mc_timesteps=None"),
        (EvaluationRequest, {"estimator": "both"}, "estimator 'both' with mc_timesteps=None"),
        (EvaluationRequest, {"mc_timesteps": 8}, "estimator 'exact' with mc_timesteps=8"),
        (EvaluationRequest, {"estimator": "mc", "mc_timesteps": 0}, "mc_timesteps must be an"),
        (EvaluationRequest, {"iw": (1, 0)}, "iw must be an integer >= 1 (got 0)"),
        (
            EvaluationRequest,
            {"spacing": "leading"},
            "spacing 'leading' applies to a respaced process",
        ),
        (EvaluationRequest, {"steps": ("5",), "spacing": "middle"}, "unknown spacing 'middle'"),
        (EvaluationRequest, {"steps": ("5x",)}, "steps '5x': give a count K"),
        (EvaluationRequest, {"steps": ("ddim",)}, "steps 'ddim': give"),
        (EvaluationRequest, {"samplers": ("euler",)}, "unknown sampler 'euler'"),
        (EvaluationRequest, {"eta": 1.5}, "eta must lie in [0, 1] (got 1.5)"),
        (EvaluationRequest, {"eta": -0.1}, "eta must lie in [0, 1] (got -0.1)"),
        (EvaluationRequest, {"seed": -1}, "seed must be an integer >= 0 (got -1)"),
        (EvaluationRequest, {"max_batch": 0}, "max_batch must be an integer >= 1 (got 0)"),
        (SamplingRequest, {"n": 0}, "n must be an integer >= 1 (got 0)"),
        (SamplingRequest, {"sampler": "euler"}, "unknown sampler 'euler'"),
        (SamplingRequest, {"eta": 0.5}, "eta applies to the sampler 'ddim' (got 'ancestral')"),
        (SamplingRequest, {"sampler": "ddim", "eta": 2.0}, "eta must lie in [0, 1] (got 2.0)"),
        (
            SamplingRequest,
            {"spacing": "trailing"},
            "spacing 'trailing' applies to a respaced process",
        ),
        (SamplingRequest, {"steps": "-3"}, "steps '-3': give"),
        (SamplingRequest, {"steps": "3,"}, "steps '3,': give"),
        (SamplingRequest, {"frames": 1}, "frames must be an integer >= 2 (got 1)"),
        (QualityRequest, {"samples": 1}, "samples must be an integer >= 2 (got 1)"),
        (TheoryRequest, {"n": 1}, "n must be an integer >= 2 (got 1)"),
        (TheoryRequest, {"T": ()}, "T needs at least one number of steps"),
        (TheoryRequest, {"T": (10, 0)}, "T must be an integer >= 1 (got 0)"),
        (TheoryRequest, {"schedule": "sigmoid"}, "unknown schedule 'sigmoid'"),
        (TheoryRequest, {"variance": ()}, "variance needs at least one choice"),
        (TheoryRequest, {"spacing": "leading"}, "spacing 'leading' applies to a respaced process"),
        (TheoryRequest, {"steps": "ddim"}, "steps 'ddim': give"),
        (TheoryRequest, {"std": 0.0}, "std must be > 0 (got 0.0)"),
        (VaeEvaluationRequest, {"split": "valid"}, "unknown split 'valid'"),
        (VaeEvaluationRequest, {"z_samples": 0}, "z_samples must be an integer >= 1 (got 0)"),
    ],
)
def test_bad_request_values_are_refused_naming_the_field(cls, kwargs, message):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:  # the same from JSON
        cls.from_dict(json.loads(json.dumps(kwargs)))
    assert message in str(info.value)


def test_estimator_says_which_estimates_run():
    assert EvaluationRequest().exact and EvaluationRequest().mc is None
    mc = EvaluationRequest(estimator="mc", mc_timesteps=4)
    assert not mc.exact and mc.mc == 4
    both = EvaluationRequest(estimator="both", mc_timesteps=4)
    assert both.exact and both.mc == 4


# --- the command line's defaults -------------------------------------------------------------


def parse(*argv: str):
    from ddpm.cli.main import _parser

    return _parser().parse_args(list(argv))


def test_evaluation_request_defaults_are_the_evaluate_commands():
    from ddpm.cli.evaluate import evaluation_request

    args = parse("evaluate", "runs/x")
    assert evaluation_request(args) == EvaluationRequest()
    assert EvaluationRequest().samplers == SAMPLERS
    # --mc K alone is the Monte Carlo estimate alone
    mc = evaluation_request(parse("evaluate", "runs/x", "--mc", "8"))
    assert mc == EvaluationRequest(estimator="mc", mc_timesteps=8)


class _Captured(Exception):
    """Stops ``ddpm sample`` once it has built its request."""


def test_sampling_request_defaults_are_the_sample_commands(monkeypatch):
    import ddpm.jobs.sample

    seen = []

    def capture(run, request, *args, **kwargs):
        seen.append(request)
        raise _Captured

    monkeypatch.setattr(ddpm.jobs.sample, "sample_run", capture)
    args = parse("sample", "runs/x")
    with pytest.raises(_Captured):
        args.func(args)
    assert seen == [SamplingRequest()]


def test_theory_request_defaults_are_the_theory_commands():
    from ddpm.cli.evaluate import theory_request

    assert theory_request(parse("theory", "gaussian")) == TheoryRequest()
    # a T-sweep computes no IW bounds unless asked
    sweep = theory_request(
        parse("theory", "gmm8", "--sweep", "--diffusion-steps", "2", "3"), sweep=True
    )
    assert sweep == TheoryRequest(T=(2, 3), iw=())


def test_quality_request_keeps_paths_as_text_for_json():
    from pathlib import Path

    from ddpm.requests import QualityRequest

    q = QualityRequest(samples=20, classifier_dir=Path("c"), data=Path("cifar"))
    assert (q.classifier_dir, q.data) == ("c", "cifar")
    assert QualityRequest.from_dict(json.loads(json.dumps(q.to_dict()))) == q
