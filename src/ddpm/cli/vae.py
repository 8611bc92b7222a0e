"""CLI of the VAE baseline: ``ddpm vae train | evaluate | compare``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

EXAMPLES = {
    "train": """examples:
  ddpm vae train --data gmm8 --out runs/vae_gmm8 --max-steps 3000
  ddpm vae train --data digits --val-every 500 --patience 4 --lr-schedule cosine --threads 1
  ddpm vae train --data gmm8 --out runs/vae_gmm8 --params-like runs/gmm8 --cpu-minutes 0.5 \\
      --max-steps 1000000                       # the DDPM's parameter count and CPU time
  ddpm vae train --data gmm8 --latent-dim 2 --net mlp --hidden 64 --out runs/vae_small
  ddpm vae train --out runs/vae_digits --resume --max-steps 6000""",
    "evaluate": """examples:
  ddpm vae evaluate runs/vae_digits                       # -ELBO, bits/dim, IW bounds
  ddpm vae evaluate runs/vae_digits --iw 1 10 100 1000 -n 500
  ddpm vae evaluate runs/vae_gmm8 --z-draws 64 --json     # a tighter distortion term""",
    "compare": """examples:
  ddpm vae compare runs/gmm8 runs/vae_gmm8      # view 3: DDPM beside VAE (table, PNG, JSON)
  ddpm vae compare runs/gmm8 runs/vae_gmm8 --vae-iw 1 100 --ddpm-iw 1 4 -n 500""",
}


def add_commands(sub, fmt) -> None:
    from ddpm.cli.flags import deprecated
    from ddpm.cli.main import SPLIT_HELP, _add_config_flags, add_run_folder_flags
    from ddpm.config import DataConfig, TrainConfig
    from ddpm.vae.config import VaeConfig

    v = sub.add_parser(
        "vae",
        help="a VAE baseline with a learned encoder: train, evaluate, compare with a DDPM",
        epilog="\n".join(EXAMPLES.values()).replace("\nexamples:", ""),
        formatter_class=fmt,
    )
    vsub = v.add_subparsers(dest="vae_command", metavar="VAE_COMMAND", required=True)

    t = vsub.add_parser("train", help="train a VAE and write a run folder",
                        epilog=EXAMPLES["train"], formatter_class=fmt)  # fmt: skip
    add_run_folder_flags(t, "runs/vae_<data name>")
    t.add_argument(
        "--cpu-minutes", type=float, default=None,
        help="stop once training has used this much CPU time, in minutes (default: no limit)",
    )  # fmt: skip
    t.add_argument(
        "--params-like", type=Path, default=None, metavar="RUN",
        help="size the network (MLP hidden or conv channels) to RUN's parameter count "
        "(default: none, the --hidden and --channels given)",
    )  # fmt: skip
    # the options of `ddpm train`, all applied alike, but --val-timesteps (a DDPM's): refused
    _add_config_flags(t, {"vae": VaeConfig, "data": DataConfig, "train": TrainConfig},
                      skip={"val_timesteps"})  # fmt: skip
    t.add_argument("--val-timesteps", type=int, default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_vae_train)

    e = vsub.add_parser("evaluate", help="-ELBO = rate + distortion, bits/dim, IW bounds",
                        epilog=EXAMPLES["evaluate"], formatter_class=fmt)  # fmt: skip
    e.add_argument("run", type=Path, help="run folder written by `ddpm vae train`")
    e.add_argument(
        "--split", default="test",
        help=SPLIT_HELP,
    )  # fmt: skip
    n = e.add_argument(
        "-n", "--num-examples", type=int, default=None, metavar="N",
        help="first N examples of the split evaluated (default: all)",
    )  # fmt: skip
    deprecated(e, n, "--n")
    e.add_argument(
        "--iw", type=int, nargs="*", default=[1, 10, 100, 1000], metavar="K",
        help="the importance-weighted bounds of K draws of z per example, for each K "
        "(default: 1 10 100 1000)",
    )  # fmt: skip
    draws = e.add_argument(
        "--z-draws", type=int, default=16, metavar="N",
        help="draws of z per example for the distortion term (default: 16)",
    )  # fmt: skip
    deprecated(e, draws, "--samples")
    _common(e, "RUN")
    e.set_defaults(func=cmd_vae_evaluate)

    c = vsub.add_parser("compare", help="view 3: a DDPM run beside a VAE run (table, PNG, JSON)",
                        epilog=EXAMPLES["compare"], formatter_class=fmt)  # fmt: skip
    c.add_argument(
        "ddpm_run", type=Path,
        help="the DDPM: a run folder of `ddpm train` or a diffusers DDPMPipeline folder",
    )  # fmt: skip
    c.add_argument("vae_run", type=Path, help="run folder written by `ddpm vae train`")
    n = c.add_argument(
        "-n", "--num-examples", type=int, default=None, metavar="N",
        help="first N test examples evaluated (default: all)",
    )  # fmt: skip
    deprecated(c, n, "--n")
    iw = c.add_argument(
        "--vae-iw", type=int, nargs="*", default=[1, 10, 100, 1000], metavar="K",
        help="the VAE's importance-weighted bounds of K draws of z, for each K "
        "(default: 1 10 100 1000)",
    )  # fmt: skip
    deprecated(c, iw, "--iw")
    c.add_argument(
        "--ddpm-iw", type=int, nargs="*", default=[], metavar="K",
        help="the DDPM's importance-weighted bounds of K chains, for each K; each chain costs "
        "T network calls (default: none)",
    )  # fmt: skip
    c.add_argument(
        "--ddpm-cpu-seconds", type=float, default=None,
        help="the DDPM's training CPU time in seconds, when its log does not hold it "
        "(default: the log's)",
    )  # fmt: skip
    _common(c, "VAE_RUN/view3")
    c.set_defaults(func=cmd_vae_compare)


def _common(p: argparse.ArgumentParser, out_default: str) -> None:
    from ddpm.cli.main import add_device_flag

    p.add_argument("--seed", type=int, default=0, help="seed of the z and x_t draws (default: 0)")
    p.add_argument(
        "--max-batch", type=int, default=4096,
        help="inputs per network call, a memory bound (default: 4096)",
    )  # fmt: skip
    add_device_flag(p)
    p.add_argument(
        "--out", type=Path, default=None,
        help=f"folder to write JSON and PNG to (default: {out_default})",
    )  # fmt: skip
    p.add_argument(
        "--json", action="store_true", help="print the JSON report to stdout (default: off)"
    )


def config_from_args(args: argparse.Namespace, base=None):
    """VaeRunConfig from base (defaults or a saved run) overridden by the given flags."""
    from ddpm.cli.main import section_overrides
    from ddpm.config import DataConfig, TrainConfig
    from ddpm.errors import ConfigError
    from ddpm.vae.config import NO_VAL_TIMESTEPS, VaeConfig, VaeRunConfig

    if getattr(args, "val_timesteps", None) is not None:
        raise ConfigError(NO_VAL_TIMESTEPS, params=("val_timesteps",))
    base = base or VaeRunConfig()
    sections = {"vae": VaeConfig, "data": DataConfig, "train": TrainConfig}
    cfg = VaeRunConfig(**section_overrides(args, base, sections), cpu_minutes=base.cpu_minutes)
    if args.cpu_minutes is not None:
        cfg = dataclasses.replace(cfg, cpu_minutes=args.cpu_minutes)
    return cfg


def cmd_vae_train(args: argparse.Namespace) -> int:
    from ddpm.cli.main import validation_line
    from ddpm.runs import folder as rundir
    from ddpm.runs import run as runs
    from ddpm.vae import train as vae_train
    from ddpm.vae.model import Vae, num_parameters, sized_like

    out = args.out or Path("runs") / f"vae_{Path(args.data or 'digits').stem}"
    if args.resume:  # the run's settings, after restoring a run a killed --overwrite left
        rundir.recover_interrupted(out)
    base = vae_train.saved_config(out)[0] if args.resume and runs.holds_run(out) else None
    cfg = config_from_args(args, base)
    if args.params_like is not None:
        ddpm_cfg, spec = runs.load_config(args.params_like)  # the size needs no weights
        target = num_parameters(runs.build(ddpm_cfg, spec)[-1])
        cfg = dataclasses.replace(cfg, vae=sized_like(cfg.vae, spec.shape, target))
        got = num_parameters(Vae(cfg.vae, spec.shape))
        print(f"sized like {args.params_like}: {target} parameters -> VAE with {got}")
    budget = f" or {cfg.cpu_minutes} CPU minutes" if cfg.cpu_minutes else ""
    threads = args.thread_choice.describe()
    print(f"training a VAE on {cfg.data.name!r} for {cfg.train.steps} steps{budget} -> {out} "
          f"({threads})", flush=True)  # fmt: skip
    res = vae_train.train_vae(cfg, out, args.resume, args.overwrite, args.device, not args.quiet)
    print(f"run folder: {res.run_dir}\nweights:    {res.checkpoint_path} (model and EMA)")
    print(f"samples:    {res.samples_path}\nloss log:   {res.log_path}")
    if res.steps == res.start_step:
        print(f"nothing to do: the run is already at step {res.steps} "
              f"({res.cpu_seconds:.1f} CPU s; --max-steps, --cpu-minutes, --patience)")  # fmt: skip
    else:
        print(f"final -ELBO {res.final_loss:.4f} after {res.steps} steps "
              f"({res.cpu_seconds:.1f} CPU s, {res.seconds:.0f} s)")  # fmt: skip
    if res.validation is not None:
        print(validation_line(res))
    return 0


def cmd_vae_evaluate(args: argparse.Namespace) -> int:
    from ddpm.jobs.vae import evaluate_vae_run
    from ddpm.requests import VaeEvaluationRequest
    from ddpm.training.dist import pick_device

    request = VaeEvaluationRequest(
        split=args.split, n=args.num_examples, iw=tuple(args.iw), z_samples=args.z_draws,
        seed=args.seed,
        max_batch=args.max_batch,
    )  # fmt: skip
    ev, path = evaluate_vae_run(args.run, request, pick_device(args.device), args.out)
    doc = json.loads(path.read_text())
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    lines = format_evaluation_table(ev)
    print(lines + f"\n  weights scored: {doc['weights']}\nJSON: {path}")
    return 0


def cmd_vae_compare(args: argparse.Namespace) -> int:
    from ddpm.requests import VaeEvaluationRequest

    request = VaeEvaluationRequest(
        n=args.num_examples, iw=tuple(args.vae_iw), seed=args.seed, max_batch=args.max_batch,
        ddpm_iw=tuple(args.ddpm_iw), ddpm_cpu_seconds=args.ddpm_cpu_seconds,
    )  # fmt: skip
    out = args.out or Path(args.vae_run) / "view3"
    return report_view3(args.ddpm_run, args.vae_run, out, request, args.device, args.json)


def report_view3(
    ddpm_model: Path,
    vae_run: Path,
    out: Path,
    request,
    device: str | None = None,
    as_json: bool = False,
) -> int:
    """View 3 (``ddpm vae compare``, ``ddpm theory RUN --vae VAE_RUN``): print the table and
    write view3.json and view3.png into out. ddpm_model: a run or diffusers folder."""
    from ddpm.jobs.vae import compare_runs
    from ddpm.loader import load
    from ddpm.report.vae import save_view3
    from ddpm.runs.checkpoint import save_json
    from ddpm.training.dist import pick_device
    from ddpm.vae.evaluate import format_view3

    model = load(ddpm_model, device=pick_device(device))
    view = compare_runs(model, vae_run, request, progress=not as_json)
    json_path = save_json(out / "view3.json", {**view.to_dict(), "request": request.to_dict()})
    png = save_view3(view, out / "view3.png")
    if as_json:
        print(json.dumps(view.to_dict(), indent=2))
    else:
        print(format_view3(view) + f"\nfigure: {png}\nJSON: {json_path}")
    return 0


def format_evaluation_table(ev) -> str:
    """A terminal table of a VAE's Evaluation: rate + distortion, bits/dim, IW bounds, KL chain."""

    def row(label: str, value: float | None, se: float | None = None) -> str:
        tail = "" if se is None else f" ± {se:.4f}"
        return f"  {label:<32s}{value:12.4f}{tail}"

    lines = [
        f"{ev.name}: n = {ev.n}, D = {ev.dims}, VAE   (nats per example ± SE)",
        row("-ELBO", ev.neg_elbo, ev.neg_elbo_se),
        row("  rate  KL(q_phi(z|x) || p(z))", ev.terms["rate"]),
        row("  distortion  E_q[-log p(x|z)]", ev.terms["distortion"]),
        row("nats/dim", ev.nats_per_dim, ev.nats_per_dim_se),
        row("bits/dim", ev.bits_per_dim, ev.bits_per_dim_se),
    ]
    lines += [row(f"-log IW bound, K={b.K}", b.neg_log_likelihood, b.se) for b in ev.iw]
    if ev.entropy is not None:
        lines.append(row("H(q(x0))", ev.entropy, ev.entropy_se))
        lines.append(row("KL joint  E[-ELBO] - H", ev.kl_joint, ev.kl_joint_se))
        if ev.kl_marginal is not None:
            lines.append(row("KL marginal  E[-log p] - H", ev.kl_marginal, ev.kl_marginal_se))
    return "\n".join(lines)
