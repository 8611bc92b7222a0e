"""CLI commands of the likelihood toolkit: ``ddpm evaluate`` and ``ddpm theory``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = {
    "evaluate": """examples:
  ddpm evaluate runs/digits                      # exact -ELBO on the test split, bits/dim
  ddpm evaluate runs/digits --n 100 --iw 1 4 16  # plus importance-weighted bounds
  ddpm evaluate runs/gmm8 --json                 # machine-readable, with the KL chain
  ddpm evaluate runs/digits --per-example a.npy  # each example's -ELBO, to pair two models
  torchrun --nproc-per-node 4 -m ddpm evaluate runs/digits -n 1000  # over 4 processes""",
    "theory": """examples:
  ddpm theory gaussian --dim 2 --mean 0.5 --std 0.5 --T 1000
  ddpm theory gaussian --dim 1 --T 10 --variance large --json
  ddpm theory gmm8 --T 200 --iw 1 4 16 64
  ddpm theory mixture.json
  ddpm theory runs/gmm8                           # trained vs Bayes-optimal vs entropy
  ddpm theory runs/gmm8 --vae runs/vae_gmm8       # view 3: the DDPM beside a VAE""",
}


def add_commands(sub, fmt) -> None:
    e = sub.add_parser(
        "evaluate",
        help="exact ELBO of a trained run, term by term, in bits/dim",
        epilog=EXAMPLES["evaluate"],
        formatter_class=fmt,
    )
    e.add_argument("run", type=Path, help="run folder written by `ddpm train`")
    e.add_argument("--split", default="test", help="test | train (default: test)")
    e.add_argument(
        "-n", "--n", type=int, default=None, help="first N examples (default: all; under "
        "torchrun write -n, which torchrun's own options do not shadow)",
    )  # fmt: skip
    e.add_argument("--iw", type=int, nargs="*", default=[], help="IW bounds for these K")
    e.add_argument(
        "--mc",
        type=int,
        default=None,
        metavar="K",
        help="also the unbiased estimate from K random timesteps per example",
    )
    e.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score the p_theta whose predicted x0 is clipped to [-1, 1] (default: as "
        "`ddpm sample` draws: clipped for discrete data)",
    )
    e.add_argument(
        "--per-example",
        type=Path,
        default=None,
        metavar="FILE.npy",
        help="write each example's -ELBO (nats, float64) to this .npy file",
    )
    e.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the x_t draws, keyed by (seed, example, t, chain) (default: 0)",
    )
    e.add_argument("--max-batch", type=int, default=4096, help="inputs per network call")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    e.add_argument("--out", type=Path, default=None, help="folder for JSON/PNG (default: RUN)")
    e.add_argument("--json", action="store_true", help="print the JSON report to stdout")
    e.set_defaults(func=cmd_evaluate)

    t = sub.add_parser(
        "theory",
        help="Bayes-optimal oracles and the four views of the DDPM objective",
        epilog=EXAMPLES["theory"],
        formatter_class=fmt,
    )
    t.add_argument("subject", help="gaussian | gmm8 | MIXTURE.json | RUN folder")
    t.add_argument("--dim", type=int, default=2, help="gaussian: dimension (default: 2)")
    t.add_argument("--mean", type=float, default=0.5, help="gaussian: mean (default: 0.5)")
    t.add_argument("--std", type=float, default=0.5, help="gaussian: std (default: 0.5)")
    t.add_argument("--T", type=int, default=1000, help="diffusion steps (default: 1000)")
    t.add_argument("--schedule", default="linear", help="linear | cosine (default: linear)")
    t.add_argument("--variance", default="small", help="small | large (default: small)")
    t.add_argument("--n", type=int, default=1000, help="examples evaluated (default: 1000)")
    t.add_argument("--iw", type=int, nargs="*", default=[1, 4, 16], help="IW bounds for these K")
    t.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    t.add_argument("--device", default=None, help="cpu or cuda (for a RUN folder)")
    t.add_argument("--out", type=Path, default=None, help="report folder")
    t.add_argument("--json", action="store_true", help="print the JSON report to stdout")
    t.add_argument(
        "--vae", type=Path, default=None, metavar="VAE_RUN",
        help="view 3 for a RUN folder: the DDPM beside this VAE run (`ddpm vae train`)",
    )  # fmt: skip
    t.set_defaults(func=cmd_theory)


def _fmt(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:12.4f}" + (f" ± {se:.4f}" if se is not None else "")


def format_evaluation(ev) -> str:
    """A terminal table of one Evaluation."""

    def row(label: str, value: float | None, se: float | None = None, note: str = "") -> str:
        return f"  {label:<30s}{_fmt(value, se)}" + (f"  ({note})" if note else "")

    lines = [
        f"{ev.name}: n = {ev.n}, D = {ev.dims}, T = {ev.T}   (nats per example ± SE)",
        row("-ELBO", ev.neg_elbo, ev.neg_elbo_se),
        row("  L_T  prior", ev.terms["prior"]),
        row("  L_1..L_(T-1)  diffusion KLs", ev.terms["diffusion"]),
        row("  L_0  decoder", ev.terms["decoder"]),
        row("nats/dim", ev.nats_per_dim, ev.nats_per_dim_se),
        row("bits/dim", ev.bits_per_dim, ev.bits_per_dim_se),
    ]
    from ddpm.api import clip_words

    lines.insert(1, f"  p_theta scored: {clip_words(ev.clip)}")
    if ev.neg_elbo_mc is not None:
        label = f"-ELBO, K={ev.mc_timesteps} random t"
        lines.append(row(label, ev.neg_elbo_mc, ev.neg_elbo_mc_se, "unbiased estimate"))
    for b in ev.iw:
        lines.append(row(f"-log IW bound, K={b.K}", b.neg_log_likelihood, b.se))
    if ev.neg_log_likelihood is not None:
        how = "exact" if ev.log_likelihood_exact else "largest-K IW bound"
        lines.append(row("-log p_theta(x0)", ev.neg_log_likelihood, ev.neg_log_likelihood_se, how))
    if ev.entropy is not None:
        lines.append(row("H(q(x0))", ev.entropy, ev.entropy_se))
        lines.append(row("KL joint", ev.kl_joint, ev.kl_joint_se, "E[-ELBO] - H"))
        if ev.kl_marginal is not None:
            lines.append(row("KL marginal", ev.kl_marginal, ev.kl_marginal_se, "E[-log p] - H"))
    if ev.posterior_gap is not None:
        lines.append(
            row(
                "posterior gap",
                ev.posterior_gap,
                ev.posterior_gap_se,
                "E KL(q(x1:T|x0)||p(x1:T|x0))",
            )
        )
    return "\n".join(lines)


def format_views(v: dict) -> str:
    """The four views of ``ddpm.theory.four_views`` as text."""
    ml, chain, vae, easy = (
        v["maximum_likelihood"], v["kl_chain"], v["hierarchical_vae"], v["many_easy_problems"]
    )  # fmt: skip
    lines = ["four views:"]
    nll = ml["neg_log_likelihood"]
    how = "exact" if ml["log_likelihood_exact"] else "largest-K IW bound"
    lines.append(
        f"  1. maximum likelihood: -ELBO {ml['neg_elbo']:.4f}"
        + "".join(f" >= -L_{b['K']} {b['neg_log_likelihood']:.4f}" for b in ml["iw"] if b["K"] > 1)
        + (f" >= -log p {nll:.4f} ({how})" if nll is not None else "")
    )
    if chain["kl_joint"] is not None and chain["kl_marginal"] is not None:
        ok = "holds" if chain["holds"] else "VIOLATED beyond 4 SE"
        lines.append(
            f"  2. KL chain: KL_joint {chain['kl_joint']:.4f} >= KL_marginal "
            f"{chain['kl_marginal']:.4f} >= 0 ({ok})"
        )
    gap = vae["posterior_gap"]
    lines.append(
        f"  3. hierarchical VAE: rate L_T {vae['rate_prior']:.4f} + diffusion KLs "
        f"{vae['diffusion_kls']:.4f} + distortion L_0 {vae['distortion_decoder']:.4f}"
        + (f"; encoder mismatch E KL(q||p_theta posterior) {gap:.4f}" if gap is not None else "")
    )
    lines.append(
        f"  4. many easy problems: T = {easy['T']}; the largest term is at t = "
        f"{easy['largest_term_t']}; the first 10% of steps hold "
        f"{100 * easy['share_in_first_tenth_of_steps']:.0f}% of the diffusion KLs; "
        f"{easy['steps_holding_90_percent']} steps hold 90%"
    )
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ddpm.api import evaluate_run

    res = evaluate_run(
        args.run,
        split=args.split,
        n=args.n,
        iw=tuple(args.iw),
        mc_timesteps=args.mc,
        seed=args.seed,
        device=args.device,
        max_batch=args.max_batch,
        out_dir=args.out,
        progress=not args.json,
        clip=args.clip,
        per_example=args.per_example,
    )
    if not res.is_main:  # another process under torchrun: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(json.loads(res.json_path.read_text()), indent=2))
    else:
        print(format_evaluation(res.evaluation))
        print(f"per-timestep plot: {res.per_timestep_path}\nJSON: {res.json_path}")
        if res.per_example_path is not None:
            print(f"per-example -ELBO: {res.per_example_path}")
    return 0


def cmd_theory(args: argparse.Namespace) -> int:
    from ddpm import report, theory

    subject = args.subject
    iw = tuple(args.iw)
    if args.vae is not None:  # view 3: DDPM vs VAE, on any data
        from ddpm.cli_vae import report_view3

        out = args.out or Path(subject) / "theory"
        return report_view3(Path(subject), args.vae, out, seed=args.seed, device=args.device,
                            as_json=args.json)  # fmt: skip
    if subject == "gaussian":
        res = theory.theory_gaussian(
            args.dim,
            args.mean,
            args.std,
            args.T,
            args.schedule,
            args.variance,
            args.n,
            iw,
            args.seed,
            progress=not args.json,
        )
        out = args.out or Path("reports") / f"theory_gaussian{args.dim}d"
    elif Path(subject).is_dir():
        from ddpm.api import pick_device

        dev = pick_device(args.device)
        res = theory.theory_run(subject, args.n, iw, args.seed, dev, progress=not args.json)
        out = args.out or Path(subject) / "theory"
    else:
        res = theory.theory_mixture(
            subject,
            args.T,
            args.schedule,
            args.variance,
            args.n,
            iw,
            args.seed,
            progress=not args.json,
        )
        out = args.out or Path("reports") / f"theory_{Path(subject).stem}"
    paths = report.write_theory_report(res, out)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    print(format_evaluation(res.subject))
    print(format_views(theory.four_views(res.subject)))
    if res.oracle is not None:
        print(format_evaluation(res.oracle))
        gap, se = res.gap_to_oracle()
        print(f"trained -ELBO minus Bayes-optimal -ELBO (paired): {gap:.4f} ± {se:.4f} nats")
    if res.closed_form is not None:
        cf = res.closed_form
        print("closed form (expectations over q(x0)):")
        for key in (
            "neg_elbo",
            "neg_log_likelihood",
            "entropy",
            "kl_joint",
            "kl_marginal",
            "posterior_gap",
        ):
            print(f"  {key:<21s} {_fmt(cf[key])}")
    for p in paths:
        print(f"wrote {p}")
    return 0
