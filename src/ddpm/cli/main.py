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

from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.errors import DdpmError

# library parameter -> the flag that sets it, where the two names differ beyond "--" and "-"
FLAG_OF = {
    "mc_timesteps": "--mc",
    "z_samples": "--samples",
    "samples": "--samples",
    "name": "--data",
    "root": "--data-root",
    "kind": "--model",
    "clip_x0": "--clip-x0",
    "quality": "--metrics",
}


def in_flags(error: DdpmError) -> str:
    """The message of a library error with the parameters it names written as the flags that
    set them ("n must be >= 1" -> "--n must be >= 1")."""
    import re

    text = str(error)
    for name in error.params:
        flag = FLAG_OF.get(name, "--" + name.replace("_", "-"))
        # a whole word, not part of a path or another name ("out" in "runs/out/x" stays)
        text = re.sub(rf"(?<![\w/.-]){re.escape(name)}(?![\w/.-])", flag, text)
    return text


# flag name -> (config section, field). Flags map one-to-one onto config fields.
_SECTIONS = {
    "diffusion": DiffusionConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
}
_RENAMED = {("data", "name"): "data", ("data", "root"): "data_root", ("model", "kind"): "model"}
_HELP = {
    "data": "built-in name (digits, gmm8, moons, swissroll, checkerboard, mnist) or a path: "
    "image folder, .npy/.npz array, Gaussian-mixture .json",
    "data_root": "folder holding the MNIST IDX files (for --data mnist)",
    "image_size": "resize/crop images to this size",
    "grayscale": "convert images to one channel",
    "T": "number of diffusion steps",
    "schedule": "noise schedule: linear | cosine",
    "prediction": "what the network predicts: eps | x0 | v",
    "variance": "reverse-process variance: small (beta_tilde) | large (beta) | learned",
    "loss": "training loss: simple | vlb | hybrid",
    "timestep_sampler": "how t is drawn for vlb training: uniform | importance",
    "model": "network: auto (U-Net for images, MLP for vectors) | mlp | unet",
    "steps": "optimisation steps",
    "batch_size": "examples per step",
    "seed": "seed for weights, batches and noise",
    "val_every": "steps between validation -ELBO estimates on held-out training examples; "
    "the best weights by it are kept (0: off)",
    "val_fraction": "share of the training examples held out for validation",
    "val_timesteps": "random timesteps per validation example in the -ELBO estimate",
    "lr_schedule": "learning rate after warm-up: constant | cosine (to 0 at --steps)",
    "patience": "stop after this many validations without improvement (0: never)",
    "autocast": "training forward pass in reduced precision: off | bf16",
    "compile": "torch.compile the network for training (slow start, faster steps)",
}

EXAMPLES = {
    "train": """examples:
  ddpm train                                   # digits, defaults (~3 min on 2 CPU cores)
  ddpm train --data gmm8 --out runs/gmm8 --steps 4000
  ddpm train --data digits --loss hybrid --variance learned --steps 20000 --out runs/hybrid
  ddpm train --data mnist --data-root ~/mnist --out runs/mnist
  ddpm train --out runs/digits --resume --steps 6000     # continue a run
  torchrun --nproc-per-node 4 -m ddpm train --data photos/ --image-size 32 --device cuda""",
    "sample": """examples:
  ddpm sample runs/digits --n 64 --out samples.png
  ddpm sample runs/digits --n 8 --trajectory --out chain.png
  ddpm sample runs/digits --steps 50                      # 50 of the T = 1000 steps
  ddpm sample runs/digits --steps 25 --sampler ddim --eta 0
  ddpm sample runs/digits --steps 10,15,20                # sections, as improved-diffusion
  ddpm sample runs/digits --steps 50 --spacing trailing   # diffusers' trailing spacing
  ddpm sample pipeline/ --n 16 --out s.png          # a diffusers DDPMPipeline folder
  ddpm sample runs/gmm8 --n 1000 --metrics              # plus exact quality scores""",
    "report": """examples:
  ddpm report runs/digits             # writes runs/digits/report.html
  ddpm evaluate runs/digits && ddpm report runs/digits   # reuse the full evaluation""",
    "forward": """examples:
  ddpm forward photo.png --out forward.png
  ddpm forward digit.png --T 1000 --schedule cosine --frames 8""",
}


def _arg_name(section: str, field: str) -> str:
    return _RENAMED.get((section, field), field)


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
            helptext = _HELP.get(name, f.name.replace("_", " "))
            if isinstance(default, bool):
                group.add_argument(
                    flag,
                    dest=name,
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=f"{helptext} (default: {default})",
                )
            elif isinstance(default, tuple):
                group.add_argument(
                    flag,
                    dest=name,
                    type=int,
                    nargs="+",
                    default=None,
                    help=f"{helptext} (default: {' '.join(map(str, default))})",
                )
            else:
                kind = (
                    type(default) if default is not None else (int if name == "image_size" else str)
                )
                group.add_argument(
                    flag,
                    dest=name,
                    type=kind,
                    default=None,
                    help=f"{helptext} (default: {default})",
                )


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
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="ddpm",
        description="Denoising diffusion probabilistic models with exact likelihood tools.",
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a DDPM and write a run folder",
        epilog=EXAMPLES["train"],
        formatter_class=fmt,
    )
    t.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<data>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    t.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--preset",
        default=None,
        help="a named recipe applied before the other flags: likelihood (the best held-out "
        "-ELBO per CPU-minute: L_vlb, learned variances, validation; see the README)",
    )
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "sample",
        help="draw samples from a trained run",
        epilog=EXAMPLES["sample"],
        formatter_class=fmt,
    )
    s.add_argument(
        "run", type=Path, help="run folder of `ddpm train`, or a diffusers DDPMPipeline folder"
    )
    s.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    s.add_argument(
        "--out",
        type=Path,
        default=None,
        help="PNG path (default: RUN/samples_seed<S>[_K<K>[_<spacing>]][_ddim_eta<E>].png)",
    )
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    s.add_argument(
        "--trajectory", action="store_true", help="also draw x_t and predicted x0 along the chain"
    )
    s.add_argument(
        "--frames", type=int, default=8, help="steps shown with --trajectory (default: 8)"
    )
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clip the predicted x0 to [-1, 1] in every step (default: yes for discrete data)",
    )
    from ddpm.cli.evaluate import STEPS_SPELLINGS, add_spacing_flag

    s.add_argument(
        "--steps",
        default=None,
        metavar="K",
        help="sample the K-step respaced process; " + STEPS_SPELLINGS + " (default: all T steps)",
    )
    add_spacing_flag(s)
    s.add_argument("--sampler", default="ancestral", help="ancestral | ddim (default: ancestral)")
    s.add_argument(
        "--eta",
        type=float,
        default=None,
        help="ddim: noise scale in [0, 1]; 0 deterministic, 1 ancestral (default: 0)",
    )
    s.add_argument(
        "--metrics", action="store_true", help="also score the samples' quality (ddpm.quality)"
    )
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
        "--out", type=Path, default=Path("forward.png"), help="PNG path (default: forward.png)"
    )
    f.add_argument("--T", type=int, default=1000, help="number of diffusion steps (default: 1000)")
    f.add_argument("--schedule", default="linear", help="linear | cosine (default: linear)")
    f.add_argument("--frames", type=int, default=8, help="number of t shown (default: 8)")
    f.add_argument("--size", type=int, default=None, help="resize the image to this size first")
    f.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    f.set_defaults(func=cmd_forward)

    r = sub.add_parser(
        "report",
        help="one self-contained HTML page about a trained run",
        epilog=EXAMPLES["report"],
        formatter_class=fmt,
    )
    r.add_argument(
        "run", type=Path, help="run folder of `ddpm train`, or a diffusers DDPMPipeline folder"
    )
    r.add_argument(
        "--data",
        default=None,
        metavar="NAME|PATH",
        help="data to score on (default: the run's own; required for a diffusers folder)",
    )
    r.add_argument(
        "--n",
        type=int,
        default=100,
        help="test examples to evaluate when the run holds no fresh eval_test.json (default: 100)",
    )
    r.add_argument("--seed", type=int, default=0, help="seed for samples and noise (default: 0)")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
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
            help="CPU threads for torch (default: torch's, one per core); 1 is often much "
            "faster on a busy machine",
        )
    return p


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
    check_steps(cfg.diffusion.T, "--T")  # a T that cannot fit is refused, not warned about
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
        print(f"nothing to do: the run is already at step {result.steps} (--steps)")
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
    quality = QualityRequest(args.n, args.seed, args.classifier_dir) if args.metrics else None
    request = SamplingRequest(
        n=args.n, seed=args.seed, sampler=args.sampler, eta=args.eta, steps=args.steps,
        spacing=args.spacing, clip=args.clip, trajectory=args.trajectory, frames=args.frames,
        quality=quality,
    )  # fmt: skip
    result = sample_run(args.run, request, args.out, args.device, progress=True)
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

    request = EvaluationRequest(data=args.data, n=args.n, seed=args.seed)
    rep = write_run_report(args.run, request, device=args.device, progress=True)
    how = "reused eval_test.json" if rep.evaluation_reused else f"evaluated n = {rep.evaluation.n}"
    print(f"report: {rep.path} ({how}, {rep.seconds:.0f} s)")
    return 0


def cmd_forward(args: argparse.Namespace) -> int:
    from ddpm.jobs.forward import forward_strip

    path = forward_strip(
        args.image,
        out=args.out,
        T=args.T,
        schedule=args.schedule,
        frames=args.frames,
        size=args.size,
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
        print(f"ddpm {args.command}: error: {in_flags(e)}", file=sys.stderr)
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
