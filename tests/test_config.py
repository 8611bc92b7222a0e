"""Typed configs: JSON round trips, unknown keys and bad values rejected with clear messages."""

from __future__ import annotations

import json

import pytest

from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.errors import ConfigError, DdpmError

NON_DEFAULT = RunConfig(
    diffusion=DiffusionConfig(
        T=250,
        schedule="cosine",
        prediction="v",
        variance="learned",
        loss="vlb",
        hybrid_lambda=0.01,
        timestep_sampler="importance",
        clip_x0=False,
    ),
    model=ModelConfig(
        kind="unet",
        hidden=64,
        depth=2,
        channels=16,
        channel_mults=(1, 2, 4),
        num_res_blocks=2,
        attn_resolutions=(8, 4),
        dropout=0.1,
    ),
    data=DataConfig(
        name="mnist", root="/data/mnist", image_size=16, grayscale=True, test_fraction=0.2
    ),
    train=TrainConfig(
        steps=10,
        batch_size=8,
        lr=1e-4,
        ema_decay=0.9,
        seed=3,
        sample_every=5,
        autocast="bf16",
        compile=True,
    ),
)


@pytest.mark.parametrize("cfg", [RunConfig(), NON_DEFAULT], ids=["defaults", "non-defaults"])
def test_run_config_round_trips_through_json(cfg):
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    text = cfg.to_json()
    again = RunConfig.from_json(text)
    assert again == cfg
    assert isinstance(again.model.channel_mults, tuple)  # JSON lists come back as tuples
    assert isinstance(again.model.attn_resolutions, tuple)
    assert json.loads(text) == json.loads(again.to_json())


@pytest.mark.parametrize(
    "cfg",
    [
        DiffusionConfig(),
        NON_DEFAULT.diffusion,
        ModelConfig(),
        NON_DEFAULT.model,
        DataConfig(),
        NON_DEFAULT.data,
        TrainConfig(),
        NON_DEFAULT.train,
    ],
)
def test_component_configs_round_trip(cfg):
    assert type(cfg).from_json(cfg.to_json()) == cfg


def test_partial_dict_keeps_defaults():
    cfg = RunConfig.from_dict({"diffusion": {"T": 10}})
    assert cfg.diffusion == DiffusionConfig(T=10)
    assert cfg.model == ModelConfig() and cfg.train == TrainConfig()


def test_unknown_key_rejected_by_name():
    with pytest.raises(ConfigError) as info:
        DiffusionConfig.from_dict({"T": 10, "sigma_small": True})
    msg = str(info.value)
    assert msg.startswith("DiffusionConfig: unknown key(s) sigma_small; known keys are ")
    assert "schedule" in msg and "variance" in msg


def test_unknown_nested_key_rejected_by_name():
    with pytest.raises(ConfigError, match=r"^ModelConfig: unknown key\(s\) widht, zz;"):
        RunConfig.from_dict({"model": {"widht": 3, "zz": 1}})
    with pytest.raises(ConfigError, match=r"^RunConfig: unknown key\(s\) optimiser;"):
        RunConfig.from_dict({"optimiser": {}})


def test_non_object_rejected():
    with pytest.raises(ConfigError, match="^DiffusionConfig: expected a JSON object, got list$"):
        RunConfig.from_dict({"diffusion": [1, 2]})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"T": 0}, "T must be an integer >= 1 (got 0)"),
        ({"T": 10.0}, "T must be an integer >= 1 (got 10.0)"),
        ({"schedule": "sigmoid"}, "unknown schedule 'sigmoid': choose one of 'linear', 'cosine'"),
        ({"prediction": "score"}, "unknown prediction 'score': choose one of 'eps', 'x0', 'v'"),
        (
            {"variance": "fixed"},
            "unknown variance 'fixed': choose one of 'small', 'large', 'learned'",
        ),
        ({"loss": "kl"}, "unknown loss 'kl': choose one of 'simple', 'vlb', 'hybrid'"),
        (
            {"loss": "vlb", "timestep_sampler": "loss-aware"},
            "unknown timestep sampler 'loss-aware': choose one of 'uniform', 'importance'",
        ),
        (
            {"variance": "learned", "loss": "simple"},
            "variance 'learned' needs a loss that trains the variance: use loss hybrid or vlb",
        ),
        ({"loss": "hybrid"}, "loss 'hybrid' trains a learned variance: add variance learned"),
        (
            {"timestep_sampler": "importance"},
            "importance-sampled timesteps are for loss vlb only",
        ),
        (
            {"variance": "learned", "loss": "hybrid", "hybrid_lambda": -0.1},
            "hybrid_lambda must be >= 0 (got -0.1)",
        ),
    ],
)
def test_bad_diffusion_values_rejected(kwargs, message):
    with pytest.raises(ConfigError) as info:
        DiffusionConfig(**kwargs)
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:  # the same through JSON, or a type error naming it
        DiffusionConfig.from_dict(kwargs)
    typed = [f"DiffusionConfig.{key} must be of type" for key in kwargs]
    assert str(info.value) == message or any(str(info.value).startswith(p) for p in typed)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (ModelConfig, {"kind": "resnet"}, "unknown model kind 'resnet'"),
        (ModelConfig, {"hidden": 0}, "model: hidden must be > 0 (got 0)"),
        (ModelConfig, {"channel_mults": ()}, "channel_mults must be positive integers (got ())"),
        (ModelConfig, {"dropout": 1.0}, "dropout must be in [0, 1) (got 1.0)"),
        (DataConfig, {"name": ""}, "data name must not be empty"),
        (DataConfig, {"test_fraction": 1.0}, "test_fraction must be in (0, 1) (got 1.0)"),
        (DataConfig, {"image_size": 1}, "image_size must be >= 2 (got 1)"),
        (TrainConfig, {"lr": 0.0}, "train: lr must be > 0 (got 0.0)"),
        (TrainConfig, {"ema_decay": 1.0}, "ema_decay must be in [0, 1) (got 1.0)"),
        (TrainConfig, {"warmup": -1}, "warmup, sample_every and checkpoint_every must be >= 0"),
        (TrainConfig, {"grad_clip": -1.0}, "grad_clip must be >= 0, 0 turns it off (got -1.0)"),
        (TrainConfig, {"autocast": "fp16"}, "unknown autocast 'fp16'"),
    ],
)
def test_bad_component_values_rejected(cls, kwargs, message):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "cls, d, field",
    [
        (TrainConfig, {"lr": "2e-3"}, "lr"),
        (DiffusionConfig, {"hybrid_lambda": "0.1"}, "hybrid_lambda"),
        (ModelConfig, {"channel_mults": [1, "2"]}, "channel_mults"),
        (DataConfig, {"n_train": "100"}, "n_train"),
    ],
)
def test_wrongly_typed_json_values_rejected_as_config_errors(cls, d, field):
    # a hand-edited config.json is user input: a wrong type is a ConfigError naming the field,
    # never a TypeError from a comparison inside validation
    with pytest.raises(ConfigError) as info:
        cls.from_dict(d)
    assert field in str(info.value)


def test_config_error_is_a_ddpm_error():
    assert issubclass(ConfigError, DdpmError)
