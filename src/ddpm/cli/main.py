"""Command-line interface: a thin layer of argparse subcommands over the library API.

Bad input (``DdpmError``) prints one line to stderr and exits with status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from ddpm.cli.flags import deprecated
from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.errors import DdpmError

# library parameter -> the flag that sets it, where the two names differ beyond "--" and "-"
FLAG_OF = {
    "T": "--diffusion-steps",
    "steps": "--respacing",
    "spacing": "--timestep-spacing",
    "n": "--num-examples",
    "samples": "--num-samples",
    "z_samples": "--z-draws",
    "mc_timesteps": "--mc",
    "name": "--data",
    "root": "--data-root",
    "kind": "--net",
    "vae_net": "--net",
    "clip_x0": "--clip-denoised",
    "clip": "--clip-denoised",
    "size": "--image-size",
    "quality": "--metrics",
    "source": "--from",
}
# where a parameter's flag depends on the command (the training length is `steps` in the
# config, the respaced process `steps` in the requests)
COMMAND_FLAG_OF = {
    "train": {"steps": "--max-steps"},
    "vae train": {"steps": "--max-steps"},
    "sample": {"n": "--num-samples"},
    "vae compare": {"iw": "--vae-iw"},
}


def in_flags(error: DdpmError, command: str = "") -> str:
    """The message of a library error with the parameters it names written as the flags that
    set them in ``command`` ("n must be >= 1" -> "--num-examples must be >= 1")."""
    import re

    flags = {**FLAG_OF, **COMMAND_FLAG_OF.get(command, {})}
    text = str(error)
    for name in error.params:
        flag = flags.get(name, "--" + name.replace("_", "-"))
        # a whole word, not part of a path or another name ("out" in "runs/out/x" stays)
        text = re.sub(rf"(?<![\w/.-]){re.escape(name)}(?![\w/.-])", flag, text)
    return text


# Flags map one-to-one onto config fields: (section, field) -> the flag's name (dest) where the
# two differ; the old spelling of each renamed flag stays as a deprecated alias.
_SECTIONS = {
    "diffusion": DiffusionConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
}
_RENAMED = {
    ("data", "name"): "data",
    ("data", "root"): "data_root",
    ("model", "kind"): "net",
    ("diffusion", "T"): "diffusion_steps",
    ("diffusion", "clip_x0"): "clip_denoised",
    ("train", "steps"): "max_steps",
}
_OLD_FLAG = {
    ("model", "kind"): "--model",
    ("diffusion", "T"): "--T",
    ("diffusion", "clip_x0"): "--clip-x0",
    ("train", "steps"): "--steps",
}
# what each config flag does, with its unit or choices; "(default: ...)" is added from the field
_HELP = {
    ("diffusion", "T"): "T, the number of diffusion steps of the forward process q(x_t|x_0)",
    ("diffusion", "schedule"): "noise schedule beta_t: linear (Ho et al.) | cosine "
    "(Nichol & Dhariwal)",
    ("diffusion", "prediction"): "what the network predicts: eps (the noise) | x0 (the clean "
    "data) | v (the velocity)",
    ("diffusion", "variance"): "reverse-process variance: small (beta_tilde_t) | large (beta_t) "
    "| learned (needs --loss vlb or hybrid)",
    ("diffusion", "loss"): "training loss: simple (noise MSE) | vlb (the -ELBO's terms) | "
    "hybrid (simple + --hybrid-lambda x vlb)",
    ("diffusion", "hybrid_lambda"): "weight of the vlb term in --loss hybrid (Nichol & "
    "Dhariwal eq. 16)",
    ("diffusion", "timestep_sampler"): "how t is drawn for --loss vlb: uniform | importance "
    "(by each term's running mean square)",
    ("diffusion", "clip_x0"): "clip the predicted x0 to [-1, 1] in p_theta's mean when sampling",
    ("model", "kind"): "network: auto (U-Net for images, MLP for vectors) | mlp | unet",
    ("model", "hidden"): "hidden width of the MLP (units per layer; vector data)",
    ("model", "depth"): "residual blocks of the MLP (vector data)",
    ("model", "channels"): "U-Net base channels: the width of its first level (images)",
    ("model", "channel_mults"): "U-Net width multiplier of each resolution level, one integer "
    "per level",
    ("model", "num_res_blocks"): "residual blocks per U-Net resolution level",
    ("model", "attn_resolutions"): "feature-map sizes (pixels per side) at which the U-Net "
    "applies self-attention",
    ("model", "dropout"): "dropout probability inside the U-Net's residual blocks, in [0, 1)",
    ("data", "name"): "built-in name (digits, gmm8, moons, swissroll, checkerboard, mnist) or "
    "a path: image folder, .npy/.npz array, Gaussian-mixture .json, CIFAR-10's binary batches "
    "(cifar-10-binary.tar.gz or its folder), downsampled ImageNet's .npz batches",
    ("data", "root"): "folder holding the MNIST IDX files (for --data mnist)",
    ("data", "image_size"): "resize the centre square of each image to this many pixels per side",
    ("data", "grayscale"): "convert images to one channel",
    ("data", "test_fraction"): "share of the examples held out as the test split, for data "
    "without one, in (0, 1)",
    ("data", "n_train"): "training examples drawn from generated data (2-d sets, mixtures)",
    ("data", "n_test"): "test examples drawn from generated data (2-d sets, mixtures)",
    ("train", "steps"): "optimisation steps to train for; --resume continues up to this step",
    ("train", "batch_size"): "training examples per optimisation step",
    ("train", "lr"): "learning rate of AdamW after warm-up",
    ("train", "lr_schedule"): "learning rate after warm-up: constant | cosine (to 0 at "
    "--max-steps)",
    ("train", "weight_decay"): "AdamW's decoupled weight decay",
    ("train", "warmup"): "warm-up steps: the learning rate rises linearly from 0 over them",
    ("train", "grad_clip"): "clip the gradient's global L2 norm to this value (0: off)",
    ("train", "ema_decay"): "EMA decay of the weights used to sample and evaluate, in [0, 1)",
    ("train", "seed"): "seed for weights, batches and noise",
    ("train", "log_every"): "steps between lines of the loss log",
    ("train", "sample_every"): "steps between sample grids written while training (0: only "
    "at the end)",
    ("train", "checkpoint_every"): "steps between checkpoints (0: only at the end)",
    ("train", "num_samples"): "samples drawn into the run's grid at the end of training",
    ("train", "val_every"): "steps between validation -ELBO estimates on held-out training "
    "examples; the best weights by it are kept (0: off)",
    ("train", "val_fraction"): "share of the training examples held out for validation, in (0, 1)",
    ("train", "val_timesteps"): "random timesteps per validation example in the -ELBO estimate",
    ("train", "patience"): "stop after this many validations without improvement (0: never)",
    ("train", "autocast"): "training forward pass in reduced precision: off | bf16",
    ("train", "compile"): "torch.compile the network for training (slow start, faster steps)",
    ("vae", "latent_dim"): "dimensions of the latent variable z of the encoder and decoder",
    ("vae", "net"): "encoder and decoder: auto (conv for images, MLP for vectors) | mlp | conv",
    ("vae", "hidden"): "hidden width of the MLP encoder and decoder (units per layer)",
    ("vae", "depth"): "hidden layers of the MLP encoder and of the MLP decoder (0: linear)",
    ("vae", "channels"): "conv base channels: the width of the first stage (the second has "
    "twice as many)",
    ("vae", "decoder_variance"): "decoder variance: learned (one per data dimension) | fixed "
    "(exp of --decoder-log-var)",
    ("vae", "decoder_log_var"): "the decoder's log-variance: its start when learned, its "
    "value when fixed",
}
# the default of a field whose value None means something
_DEFAULT_WORDS = {
    ("data", "root"): "none",
    ("data", "image_size"): "the images' own size",
}

EXAMPLES = {
    "train": """examples:
  ddpm train                                   # digits, defaults (~3 min on 2 CPU cores)
  ddpm train --data gmm8 --out runs/gmm8 --max-steps 4000
  ddpm train --data digits --loss hybrid --variance learned --max-steps 20000 --out runs/hybrid
  ddpm train --data gmm8 --net mlp --hidden 256 --diffusion-steps 200 --out runs/gmm8_t200
  ddpm train --data mnist --data-root ~/mnist --out runs/mnist
  ddpm train --out runs/digits --resume --max-steps 6000     # continue a run
  torchrun --nproc-per-node 4 -m ddpm train --data photos/ --image-size 32 --device cuda""",
    "sample": """examples:
  ddpm sample runs/digits -n 64 --out samples.png
  ddpm sample runs/digits -n 8 --trajectory --out chain.png
  ddpm sample runs/digits --respacing 50                  # 50 of the T = 1000 steps
  ddpm sample runs/digits --respacing 25 --sampler ddim --eta 0
  ddpm sample runs/digits --respacing 10,15,20            # sections, as improved-diffusion
  ddpm sample runs/digits --respacing 50 --timestep-spacing trailing   # diffusers' spacing
  ddpm sample runs/digits --no-clip-denoised              # p_theta without clipping x0
  ddpm sample pipeline/ --num-samples 16 --out s.png      # a diffusers DDPMPipeline folder
  ddpm sample model-10.pt --from denoising-diffusion-pytorch --flags "$JSON"  # its Trainer's
  ddpm sample runs/gmm8 -n 1000 --metrics                 # plus exact quality scores""",
    "report": """examples:
  ddpm report runs/digits             # writes runs/digits/report.html
  ddpm report runs/digits --num-examples 500             # evaluate 500 test examples
  ddpm evaluate runs/digits && ddpm report runs/digits   # reuse the full evaluation
  ddpm report ema.pt --from improved-diffusion --flags "$FLAGS" --data cifar-10-binary.tar.gz""",
    "forward": """examples:
  ddpm forward photo.png --out forward.png
  ddpm forward digit.png --diffusion-steps 1000 --schedule cosine --frames 8
  ddpm forward photo.jpg --image-size 64 --seed 1""",
}


def _arg_name(section: str, field: str) -> str:
    return _RENAMED.get((section, field), field)


def _default_words(section: str, field: str, default: object) -> str:
    if (section, field) in _DEFAULT_WORDS:
        return _DEFAULT_WORDS[section, field]
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return str(default)


def _add_config_flags(
    p: argparse.ArgumentParser, sections: dict | None = None, skip: Collection[str] = ()
) -> None:
    """One flag per config field (but those named in skip); defaults are None so that only
    given flags override."""
    for section, cls in (sections or _SECTIONS).items():
        group = p.add_argument_group(f"{section} options")
        defaults = cls()
        for f in dataclasses.fields(cls):
            name = _arg_name(section, f.name)
            if name in skip:
                continue
            default = getattr(defaults, f.name)
            flag = "--" + name.replace("_", "-")
            words = _default_words(section, f.name, default)
            helptext = f"{_HELP[section, f.name]} (default: {words})"
            if isinstance(default, bool):
                kw: dict = {"action": argparse.BooleanOptionalAction}
            elif isinstance(default, tuple):
                kw = {"type": int, "nargs": "+"}
            else:
                kind = (
                    type(default) if default is not None else (int if name == "image_size" else str)
                )
                kw = {"type": kind}
            if (section, f.name) == ("diffusion", "T"):
                kw["metavar"] = "T"
            action = group.add_argument(flag, dest=name, default=None, help=helptext, **kw)
            if (section, f.name) in _OLD_FLAG:
                deprecated(p, action, _OLD_FLAG[section, f.name])


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """RunConfig from base (defaults, or a saved run) overridden by the flags that were given."""
    return RunConfig(**section_overrides(args, base or RunConfig(), _SECTIONS))


def section_overrides(args: argparse.Namespace, base, sections: dict) -> dict:
    """{section: base's section with the given flags applied} for each config section."""
    parts = {}
    for section, cls in sections.items():
        current = getattr(base, section)
        changes = {}
        for f in dataclasses.fields(cls):
            value = getattr(args, _arg_name(section, f.name), None)
            if value is not None:
                changes[f.name] = tuple(value) if isinstance(value, list) else value
        parts[section] = dataclasses.replace(current, **changes)
    return parts


def _parser() -> argparse.ArgumentParser:
    import ddpm

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="ddpm",
        description="Denoising diffusion probabilistic models with exact likelihood tools.",
        formatter_class=fmt,
    )
    p.add_argument(
        "--version", action="version", version=f"ddpm {ddpm.__version__}",
        help="print the installed version of ddpm and exit",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a DDPM and write a run folder",
        epilog=EXAMPLES["train"],
        formatter_class=fmt,
    )
    add_run_folder_flags(t, "runs/<data name>")
    t.add_argument(
        "--preset",
        default=None,
        help="a named recipe applied before the other flags: likelihood (the best held-out "
        "-ELBO per CPU-minute: L_vlb, learned variances, validation; see the README) "
        "(default: none)",
    )
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "sample",
        help="draw samples from a trained run",
        epilog=EXAMPLES["sample"],
        formatter_class=fmt,
    )
    s.add_argument("run", type=Path, help=MODEL_HELP)
    n = s.add_argument(
        "-n", "--num-samples", type=int, default=64, metavar="N",
        help="number of samples drawn (default: 64)",
    )  # fmt: skip
    deprecated(s, n, "--n")
    add_source_flags(s)
    s.add_argument(
        "--out",
        type=Path,
        default=None,
        help="PNG to write (default: RUN/samples_seed<S>[_K<K>[_<spacing>]][_ddim_eta<E>].png)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default: 0)")
    s.add_argument(
        "--trajectory", action="store_true",
        help="also draw x_t and the predicted x0 along the chain (default: off)",
    )  # fmt: skip
    s.add_argument(
        "--frames", type=int, default=8,
        help="steps of the chain shown with --trajectory (default: 8)",
    )  # fmt: skip
    add_device_flag(s)
    from ddpm.cli.evaluate import add_clip_flag, add_respacing_flags

    add_clip_flag(s, "clip the predicted x0 to [-1, 1] in every step of p_theta (default: "
                  "the run's own choice: on for discrete data)")  # fmt: skip
    add_respacing_flags(s, "sample the K-step respaced process", "all T steps", metavar="K")
    s.add_argument(
        "--sampler", default="ancestral",
        help="ancestral (p_theta's chain) | ddim (Song et al.) (default: ancestral)",
    )  # fmt: skip
    s.add_argument(
        "--eta",
        type=float,
        default=None,
        help="with --sampler ddim: noise scale in [0, 1]; 0 deterministic, 1 ancestral "
        "(default: 0)",
    )
    s.add_argument(
        "--metrics", action="store_true",
        help="also score the samples' quality (ddpm.quality) (default: off)",
    )  # fmt: skip
    s.add_argument(
        "--data", default=None, metavar="NAME|PATH",
        help="with --metrics: the data the samples are compared with, a built-in name or a path "
        "(default: the run's own; required for a diffusers folder and a --from checkpoint file)",
    )  # fmt: skip
    from ddpm.cli.quality import add_classifier_flag

    add_classifier_flag(s)
    s.set_defaults(func=cmd_sample)

    f = sub.add_parser(
        "forward",
        help="draw the forward process q(x_t|x_0) applied to an image",
        epilog=EXAMPLES["forward"],
        formatter_class=fmt,
    )
    f.add_argument("image", type=Path, help="PNG/JPEG image")
    f.add_argument(
        "--out", type=Path, default=Path("forward.png"),
        help="PNG to write (default: forward.png)",
    )  # fmt: skip
    diffusion_steps = f.add_argument(
        "--diffusion-steps", type=int, default=1000, metavar="T",
        help="T, the number of diffusion steps of the forward process (default: 1000)",
    )  # fmt: skip
    deprecated(f, diffusion_steps, "--T")
    f.add_argument(
        "--schedule", default="linear", help="noise schedule: linear | cosine (default: linear)"
    )
    f.add_argument(
        "--frames", type=int, default=8, help="number of t shown, from 0 to T (default: 8)"
    )
    size = f.add_argument(
        "--image-size", type=int, default=None, metavar="PIXELS",
        help="resize the centre square of the image to this many pixels per side first "
        "(default: the image's own size)",
    )  # fmt: skip
    deprecated(f, size, "--size")
    f.add_argument(
        "--seed", type=int, default=0, help="seed of the noise added to the image (default: 0)"
    )
    f.set_defaults(func=cmd_forward)

    r = sub.add_parser(
        "report",
        help="one self-contained HTML page about a trained run",
        epilog=EXAMPLES["report"],
        formatter_class=fmt,
    )
    r.add_argument("run", type=Path, help=MODEL_HELP)
    r.add_argument(
        "--data",
        default=None,
        metavar="NAME|PATH",
        help="data to score on, a built-in name or a path (default: the run's own; required "
        "for a diffusers folder and a --from checkpoint file)",
    )
    n = r.add_argument(
        "-n", "--num-examples", type=int, default=100, metavar="N",
        help="first N test examples evaluated when the run holds no fresh eval_test.json "
        "(default: 100)",
    )  # fmt: skip
    deprecated(r, n, "--n")
    r.add_argument("--seed", type=int, default=0, help="seed of the samples and noise (default: 0)")
    add_source_flags(r)
    add_device_flag(r)
    r.set_defaults(func=cmd_report)

    from ddpm.cli import evaluate as cli_eval

    cli_eval.add_commands(sub, fmt)
    from ddpm.cli import vae as cli_vae

    cli_vae.add_commands(sub, fmt)
    for command in commands(p).values():
        command.add_argument(
            "--threads",
            type=int,
            default=None,
            help="CPU threads for torch; 1 is often much faster on a busy machine (default: "
            "torch's, one per core)",
        )
    return p


def add_run_folder_flags(p: argparse.ArgumentParser, default_out: str) -> None:
    """The flags every training command shares: where the run goes, resume or replace it."""
    p.add_argument(
        "--out", type=Path, default=None, help=f"run folder to write (default: {default_out})"
    )
    p.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its last checkpoint, with its saved settings "
        "(default: off)",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace the run in --out with a new one (default: off)",
    )  # fmt: skip
    add_device_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")


SPLIT_HELP = (
    "split scored: test | train | all, every example in the source's own order with none held "
    "out (image files sorted by path, array rows, published train then test batches) "
    "(default: test)"
)
MODEL_HELP = (
    "run folder of `ddpm train`, a diffusers DDPMPipeline folder, or with --from another "
    "library's checkpoint file"
)
# the libraries whose checkpoint files `--from` names (ddpm.loader.SOURCES; kept here so that
# `ddpm --help` answers without importing torch; a test checks the two agree)
FOREIGN_FILES = ("improved-diffusion", "denoising-diffusion-pytorch")


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """--from LIBRARY --flags TEXT: a checkpoint file of another library and its settings."""
    p.add_argument(
        "--from", dest="source", default=None, choices=FOREIGN_FILES, metavar="LIBRARY",
        help="the library that wrote the checkpoint FILE given as the model: "
        f"{' | '.join(FOREIGN_FILES)} (default: none; run and diffusers folders are recognised "
        "by their files). Results go to FILE's stem + _ddpm/ beside it unless --out says",
    )  # fmt: skip
    p.add_argument(
        "--flags", default=None, metavar="TEXT",
        help="with --from: the settings the model was trained with, in that library's own "
        "spelling: improved-diffusion's MODEL_FLAGS and DIFFUSION_FLAGS as one quoted string "
        "('--image_size 32 --learn_sigma True ...'); denoising-diffusion-pytorch's JSON "
        "'{\"unet\": {Unet keywords}, \"diffusion\": {GaussianDiffusion keywords}}' "
        "(default: none)",
    )  # fmt: skip


def model_of(args: argparse.Namespace):
    """The model a command works on: the folder in ``args.run`` (loaded by the job, under its
    lock), or the checkpoint file ``--from`` names, loaded here with its ``--flags``."""
    from ddpm.errors import ConfigError

    if args.source is None:
        if args.flags is not None:
            raise ConfigError("--flags applies with --from LIBRARY; add --from or drop --flags")
        return args.run
    from ddpm.loader import load
    from ddpm.training.dist import pick_device

    return load(args.run, device=pick_device(args.device), source=args.source, flags=args.flags)


def add_device_flag(p: argparse.ArgumentParser, devices: str = "cpu, cuda, cuda:1 ...") -> None:
    """--device: where the command computes."""
    p.add_argument(
        "--device", default=None,
        help=f"where to compute: {devices} (default: cuda if available, else cpu)",
    )  # fmt: skip


def commands(p: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """{"train": parser, "vae train": parser, ...}: the parsers that run a command, those with
    no subcommands of their own, at any depth below p."""
    found = {}
    for action in p._actions:  # argparse lists a parser's subcommands only among its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= commands(sub, f"{prefix}{name} ")
    return found or {prefix.strip(): p}


# The linear schedule of [Ho20] was designed for T = 1000; far beyond that, runs get slow.
_DESIGNED_T, _FAR_BEYOND = 1000, 4


def _warn_large_T(cfg: RunConfig) -> None:
    T = cfg.diffusion.T
    if T > _FAR_BEYOND * _DESIGNED_T:
        print(
            f"ddpm train: warning: T = {T} is far beyond the T = {_DESIGNED_T} the "
            f"{cfg.diffusion.schedule} schedule was designed for; every sample takes {T} "
            "network calls",
            file=sys.stderr,
            flush=True,
        )


def cmd_train(args: argparse.Namespace) -> int:
    from ddpm.memory import check_steps
    from ddpm.runs import config as runconfig
    from ddpm.runs import folder as rundir
    from ddpm.runs import run as runs
    from ddpm.training.loop import train
    from ddpm.training.presets import apply_preset

    out = args.out or Path("runs") / Path(args.data or DataConfig().name).stem
    if args.resume:  # the run's settings, after restoring a run a killed --overwrite left
        rundir.recover_interrupted(out)
    base = runconfig.saved_config(out)[0] if args.resume and runs.holds_run(out) else None
    if args.preset is not None:  # on resume, compared with the saved run like any flag
        base = apply_preset(args.preset, base)
    cfg = config_from_args(args, base)  # a resumed run keeps its settings unless flags differ
    threads = args.thread_choice.describe()
    print(
        f"training on {cfg.data.name!r} for {cfg.train.steps} steps -> {out} ({threads})",
        flush=True,
    )
    check_steps(
        cfg.diffusion.T, "--diffusion-steps"
    )  # a T that cannot fit is refused, not warned about
    _warn_large_T(cfg)
    result = train(
        cfg,
        out,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.quiet,
    )
    print(f"run folder: {result.run_dir}")
    print(f"weights:    {result.checkpoint_path} (model and EMA)")
    print(f"samples:    {result.samples_path}")
    print(f"loss log:   {result.log_path}")
    if result.steps == result.start_step:
        print(f"nothing to do: the run is already at step {result.steps} (--max-steps)")
    else:
        done = f"after {result.steps} steps ({result.seconds:.0f} s)"
        print(f"final loss {result.final_loss:.4f} {done}")
    if result.validation is not None:
        print(validation_line(result))
    print(f"report:     ddpm report {result.run_dir}  ->  {result.run_dir / 'report.html'}")
    return 0


def validation_line(result) -> str:
    """The best held-out -ELBO of a TrainResult that validated, in one line."""
    v = result.validation
    stop = f"; stopped early at step {result.steps} (--patience)" if v.stopped_early else ""
    return (
        f"validation: best -ELBO {v.best:.4f} ± {v.best_se:.4f} nats "
        f"({v.best_bpd:.4f} bits/dim) at step {v.best_step}: the run's model{stop}"
    )


def cmd_sample(args: argparse.Namespace) -> int:
    from ddpm.errors import ConfigError
    from ddpm.jobs.sample import sample_run
    from ddpm.model import clip_words
    from ddpm.requests import QualityRequest, SamplingRequest

    if args.classifier_dir is not None and not args.metrics:
        raise ConfigError("--classifier-dir applies with --metrics; add it or drop the option")
    if args.data is not None and not args.metrics:
        raise ConfigError("--data applies with --metrics; add it or drop the option")
    quality = (
        QualityRequest(args.num_samples, args.seed, args.classifier_dir, args.data)
        if args.metrics
        else None
    )
    request = SamplingRequest(
        n=args.num_samples, seed=args.seed, sampler=args.sampler, eta=args.eta,
        steps=args.respacing, spacing=args.timestep_spacing, clip=args.clip_denoised,
        trajectory=args.trajectory, frames=args.frames,
        quality=quality,
    )  # fmt: skip
    result = sample_run(model_of(args), request, args.out, args.device, progress=True)
    print(f"samples: {result.samples_path}  (p_theta: {clip_words(result.clip)})")
    print(f"array:   {result.array_path}")
    if result.trajectory_path is not None:
        print(f"trajectory: {result.trajectory_path}")
    if result.quality is not None:
        from ddpm.cli.quality import format_quality

        print(format_quality(result.quality))
        print(f"quality JSON: {result.quality_path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ddpm.jobs.report import write_run_report
    from ddpm.requests import EvaluationRequest

    request = EvaluationRequest(data=args.data, n=args.num_examples, seed=args.seed)
    rep = write_run_report(model_of(args), request, device=args.device, progress=True)
    how = "reused eval_test.json" if rep.evaluation_reused else f"evaluated n = {rep.evaluation.n}"
    print(f"report: {rep.path} ({how}, {rep.seconds:.0f} s)")
    return 0


def cmd_forward(args: argparse.Namespace) -> int:
    from ddpm.jobs.forward import forward_strip

    path = forward_strip(
        args.image,
        out=args.out,
        T=args.diffusion_steps,
        schedule=args.schedule,
        frames=args.frames,
        size=args.image_size,
        seed=args.seed,
    )
    print(f"forward process: {path}")
    return 0


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # no EDQUOT on Windows


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from ddpm.threads import torch_threads

    # File names that are not valid in the locale's encoding (bytes Python keeps as lone
    # surrogates) are printed escaped, as Python's own stderr does, not a failure after the work.
    strict = [s for s in (sys.stdout, sys.stderr) if getattr(s, "errors", None) == "strict"]
    for stream in strict:
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        with torch_threads(args.threads) as args.thread_choice:
            return args.func(args)
    except DdpmError as e:
        command = " ".join(filter(None, (args.command, getattr(args, "vae_command", None))))
        print(f"ddpm {args.command}: error: {in_flags(e, command)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a collective whose peer stopped, under torchrun
        dist = sys.modules.get("ddpm.training.dist")
        lost = dist.peer_lost(e) if dist is not None else None
        if lost is None:
            raise
        print(f"ddpm {args.command}: error: {lost}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written (or an input gone while reading)
        where = f"{e.filename}: " if e.filename else ""
        if e.errno in _DISK_FULL:
            print(
                f"ddpm {args.command}: error: {where}the disk is full ({e.strerror or e}); "
                "free some space or write elsewhere",
                file=sys.stderr,
            )
            return 2
        print(
            f"ddpm {args.command}: error: {where}{e.strerror or e}; check the path and its "
            "permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        for stream in strict:
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="strict")
