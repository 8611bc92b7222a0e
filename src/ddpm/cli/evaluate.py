"""CLI commands of the likelihood toolkit: ``ddpm evaluate`` and ``ddpm theory``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path

from ddpm.cli.flags import deprecated
from ddpm.errors import ConfigError

SWEEP_N = 300  # examples per (T, variance) of a T-sweep: minutes for T up to 5000 on a CPU
STEPS_SPELLINGS = (
    "K is a count ('50'), section counts ('10,15,20': each section of the T steps evenly "
    "spaced, as improved-diffusion) or 'ddimK' (one integer stride, as improved-diffusion)"
)

EXAMPLES = {
    "evaluate": """examples:
  ddpm evaluate runs/digits                      # exact -ELBO on the test split, bits/dim
  ddpm evaluate runs/digits -n 100 --iw 1 4 16   # plus importance-weighted bounds
  ddpm evaluate runs/gmm8 --json                 # machine-readable, with the KL chain
  ddpm evaluate runs/digits --per-example a.npy  # each example's -ELBO, to pair two models
  ddpm evaluate runs/digits --respacing 10 50 1000        # -ELBO of the K-step processes
  ddpm evaluate runs/digits --respacing 10,15,20 ddim50   # improved-diffusion's spellings
  ddpm evaluate runs/digits --respacing 10 50 --timestep-spacing leading   # diffusers'
  ddpm evaluate runs/digits --no-clip-denoised   # score p_theta without clipping x0
  ddpm evaluate pipeline/ --data digits          # a diffusers DDPMPipeline folder
  ddpm evaluate ema.pt --from improved-diffusion --flags "$FLAGS" --data cifar-10-binary.tar.gz
                                 # an improved-diffusion checkpoint; FLAGS: its MODEL_FLAGS and
                                 # DIFFUSION_FLAGS, e.g. "--image_size 32 --learn_sigma True ..."
  ddpm evaluate runs/gmm8 --num-samples 1000     # plus sample quality beside the likelihood
  ddpm evaluate runs/gmm8 --respacing 10 100 1000 --num-samples 1000   # quality, bits/dim vs K
  torchrun --nproc-per-node 4 -m ddpm evaluate runs/digits -n 1000  # over 4 processes
  ddpm evaluate runs/gmm8 --iw 1 4 16 --ode      # plus the probability-flow ODE likelihood
  ddpm evaluate runs/digits -n 32 --ode --ode-probes 4    # Hutchinson divergence, 4 probes""",
    "theory": """examples:
  ddpm theory gaussian --dim 2 --mean 0.5 --std 0.5 --diffusion-steps 1000
  ddpm theory gaussian --dim 1 --diffusion-steps 10 --variance large --json
  ddpm theory gaussian --respacing 50             # the 50-step respaced process
  ddpm theory gaussian --respacing 50 --timestep-spacing trailing   # ... on diffusers' steps
  ddpm theory gmm8 --diffusion-steps 200 --iw 1 4 16 64
  ddpm theory gaussian --mean 0.3 --sweep --diffusion-steps 2 10 100 1000 \\
      --variance small large optimal              # a T-sweep
  ddpm theory gmm8 --sweep --diffusion-steps 10 100 1000 5000 --variance optimal -n 300
  ddpm theory mixture.json
  ddpm theory runs/gmm8                           # trained vs Bayes-optimal vs entropy
  ddpm theory gaussian --dim 2 --ode              # ODE likelihood vs its closed form
  ddpm theory runs/gmm8 --vae runs/vae_gmm8       # view 3: the DDPM beside a VAE""",
}


def add_commands(sub, fmt) -> None:
    from ddpm.cli.main import MODEL_HELP, SPLIT_HELP, add_device_flag, add_source_flags

    e = sub.add_parser(
        "evaluate",
        help="exact ELBO of a trained run, term by term, in bits/dim",
        epilog=EXAMPLES["evaluate"],
        formatter_class=fmt,
    )
    e.add_argument("run", type=Path, help=MODEL_HELP)
    add_source_flags(e)
    e.add_argument(
        "--data",
        default=None,
        metavar="NAME|PATH",
        help="data to score on, a built-in name or a path (default: the run's own; required "
        "for a diffusers folder and a --from checkpoint file)",
    )
    e.add_argument(
        "--split", default="test",
        help=SPLIT_HELP,
    )  # fmt: skip
    n = e.add_argument(
        "-n", "--num-examples", type=int, default=None, metavar="N",
        help="first N examples of the split evaluated (default: all; under torchrun write -n "
        "or --num-examples, which torchrun's own options do not shadow)",
    )  # fmt: skip
    deprecated(e, n, "--n")
    e.add_argument(
        "--iw", type=int, nargs="*", default=[], metavar="K",
        help="also the importance-weighted bounds of K chains per example, for each K "
        "(default: none)",
    )  # fmt: skip
    e.add_argument(
        "--mc",
        type=int,
        default=None,
        metavar="K",
        help="the unbiased Monte Carlo estimate from K random timesteps per example, one in "
        "each of K strata of 1..T of geometrically growing width (fewer where strata "
        "coincide): about K/T of the network calls of the exact loop, which it replaces "
        "unless --estimator both (default: none, the exact loop)",
    )
    e.add_argument(
        "--estimator",
        choices=("exact", "mc", "both"),
        default=None,
        help="exact: the T-step loop; mc: the --mc K estimate alone; both (default: exact, or "
        "mc when --mc K is given)",
    )
    add_clip_flag(e, "score the p_theta whose predicted x0 is clipped to [-1, 1] (default: as "
                  "`ddpm sample` draws: the run's own choice, on for discrete data)")  # fmt: skip
    e.add_argument(
        "--per-example",
        type=Path,
        default=None,
        metavar="FILE.npy",
        help="write each example's -ELBO (nats, float64) to this .npy file (default: none)",
    )
    e.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the x_t draws, keyed by (seed, example, t, chain) (default: 0)",
    )
    add_respacing_flags(
        e, "evaluate the K-step respaced process for each K (one exact ELBO per K)",
        "none: the run's own T steps", nargs="+",
    )  # fmt: skip
    e.add_argument(
        "--max-batch", type=int, default=4096,
        help="inputs per network call, a memory bound (default: 4096)",
    )  # fmt: skip
    add_device_flag(e)
    e.add_argument(
        "--out", type=Path, default=None, help="folder to write JSON and PNG to (default: RUN)"
    )
    e.add_argument(
        "--json", action="store_true", help="print the JSON report to stdout (default: off)"
    )
    samples = e.add_argument(
        "--num-samples",
        type=int,
        default=None,
        metavar="N",
        help="also draw N samples and score their quality beside the likelihood (default: none)",
    )
    deprecated(e, samples, "--samples")
    e.add_argument(
        "--samplers",
        nargs="+",
        default=None,
        help="with --respacing and --num-samples: samplers compared at each K, of ancestral "
        "and ddim (default: ancestral ddim)",
    )
    e.add_argument(
        "--eta", type=float, default=None,
        help="with --samplers ddim: noise scale in [0, 1] (default: 0)",
    )  # fmt: skip
    from ddpm.cli.quality import add_classifier_flag

    add_classifier_flag(e)
    add_ode_flags(e)
    e.set_defaults(func=cmd_evaluate)

    t = sub.add_parser(
        "theory",
        help="Bayes-optimal oracles and the four views of the DDPM objective",
        epilog=EXAMPLES["theory"],
        formatter_class=fmt,
    )
    t.add_argument("subject", help="gaussian | gmm8 | MIXTURE.json | RUN folder")
    t.add_argument(
        "--dim", type=int, default=2, help="gaussian: dimensions of the data (default: 2)"
    )
    t.add_argument(
        "--mean", type=float, default=0.5, help="gaussian: mean of every dimension (default: 0.5)"
    )
    t.add_argument(
        "--std", type=float, default=0.5,
        help="gaussian: standard deviation of every dimension (default: 0.5)",
    )  # fmt: skip
    steps = t.add_argument(
        "--diffusion-steps",
        type=int,
        nargs="+",
        default=[1000],
        metavar="T",
        help="T, the number of diffusion steps of the process; several values with --sweep "
        "(default: 1000)",
    )
    deprecated(t, steps, "--T")
    t.add_argument(
        "--sweep", action="store_true",
        help="run a T-sweep: the bound at each --diffusion-steps value and each --variance "
        "(default: off)",
    )  # fmt: skip
    t.add_argument(
        "--schedule", default="linear", help="noise schedule: linear | cosine (default: linear)"
    )
    t.add_argument(
        "--variance",
        nargs="+",
        default=["small"],
        help="reverse-process variance: small | large | optimal (the exact posterior "
        "variance); several with --sweep (default: small)",
    )
    n = t.add_argument(
        "-n", "--num-examples", type=int, default=None, metavar="N",
        help=f"number of examples evaluated (default: 1000; {SWEEP_N} per point of a T-sweep)",
    )  # fmt: skip
    deprecated(t, n, "--n")
    add_respacing_flags(
        t, "gaussian: the K-step respaced process, with its closed form", "all T steps",
        metavar="K",
    )  # fmt: skip
    t.add_argument(
        "--iw",
        type=int,
        nargs="*",
        default=None,
        metavar="K",
        help="the importance-weighted bounds of K chains per example, for each K "
        "(default: 1 4 16; none in a T-sweep)",
    )
    t.add_argument(
        "--seed", type=int, default=0, help="seed of the data and noise draws (default: 0)"
    )
    add_device_flag(t, "cpu, cuda ..., for a RUN folder")
    t.add_argument(
        "--out", type=Path, default=None,
        help="report folder to write (default: reports/theory_<subject>, or RUN/theory)",
    )  # fmt: skip
    t.add_argument(
        "--json", action="store_true", help="print the JSON report to stdout (default: off)"
    )
    add_ode_flags(t)
    t.add_argument(
        "--vae", type=Path, default=None, metavar="VAE_RUN",
        help="view 3 for a RUN folder: the DDPM beside this VAE run (`ddpm vae train`) "
        "(default: none)",
    )  # fmt: skip
    t.set_defaults(func=cmd_theory)


def add_clip_flag(p: argparse.ArgumentParser, helptext: str) -> None:
    """--clip-denoised/--no-clip-denoised: which p_theta (improved-diffusion's clip_denoised);
    the old --clip/--no-clip stays as a deprecated alias."""
    clip = p.add_argument(
        "--clip-denoised", action=argparse.BooleanOptionalAction, default=None, help=helptext
    )
    deprecated(p, clip, "--clip")


def add_respacing_flags(p: argparse.ArgumentParser, what: str, default: str, **kwargs) -> None:
    """--respacing K (improved-diffusion's timestep_respacing) and --timestep-spacing
    (diffusers' timestep_spacing), see ``ddpm.process.respace``; the old --steps and --spacing
    stay as deprecated aliases."""
    kwargs.setdefault("metavar", "K")
    respacing = p.add_argument(
        "--respacing", default=None, help=f"{what}; {STEPS_SPELLINGS} (default: {default})",
        **kwargs,
    )  # fmt: skip
    deprecated(p, respacing, "--steps")
    spacing = p.add_argument(
        "--timestep-spacing",
        default=None,
        metavar="SPACING",
        help="with --respacing K (one count): linspace | leading | trailing, the K steps "
        "diffusers' timestep_spacing of that name picks (default: improved-diffusion's even "
        "spacing, equal to linspace except at exact half-integer ties)",
    )
    deprecated(p, spacing, "--spacing")


def add_ode_flags(p: argparse.ArgumentParser) -> None:
    """--ode and its solver settings (fields of ddpm.likelihood.ode.OdeConfig)."""
    p.add_argument(
        "--ode",
        action="store_true",
        help="also the exact likelihood of the probability-flow ODE that shares the network "
        "(a different model from p_theta: reported beside -ELBO, never as its value) "
        "(default: off)",
    )
    p.add_argument(
        "--ode-rtol", type=float, default=1e-5,
        help="relative tolerance of the ODE solver (default: 1e-5)",
    )  # fmt: skip
    p.add_argument(
        "--ode-atol", type=float, default=1e-5,
        help="absolute tolerance of the ODE solver (default: 1e-5)",
    )  # fmt: skip
    p.add_argument(
        "--ode-method", default="RK45",
        help="scipy solve_ivp method: RK45 | RK23 | DOP853 | Radau | BDF | LSODA "
        "(default: RK45)",
    )  # fmt: skip
    p.add_argument(
        "--ode-divergence",
        default="auto",
        help="how the flow's divergence is computed: exact | hutchinson (K random probes) | "
        "auto (exact up to 16 dimensions) (default: auto)",
    )
    p.add_argument(
        "--ode-probes", type=int, default=1, metavar="K",
        help="Hutchinson probes per example (default: 1)",
    )  # fmt: skip
    p.add_argument(
        "--ode-s-min", type=float, default=None,
        help="start of the flow in diffusion time s (default: 1/T)",
    )  # fmt: skip


def ode_config(args: argparse.Namespace):
    """The OdeConfig of the --ode-* flags, or None without --ode."""
    if not args.ode:
        return None
    from ddpm.likelihood.ode import OdeConfig

    return OdeConfig(
        rtol=args.ode_rtol,
        atol=args.ode_atol,
        method=args.ode_method,
        divergence=args.ode_divergence,
        probes=args.ode_probes,
        s_min=args.ode_s_min,
    )


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
    ]
    if ev.terms:
        lines += [
            row("  L_T  prior", ev.terms["prior"]),
            row("  L_1..L_(T-1)  diffusion KLs", ev.terms["diffusion"]),
            row("  L_0  decoder", ev.terms["decoder"]),
        ]
    else:
        lines[-1] += f"   (Monte Carlo, {ev.mc_timesteps} stratified t per example)"
    lines += [
        row("nats/dim", ev.nats_per_dim, ev.nats_per_dim_se),
        row("bits/dim", ev.bits_per_dim, ev.bits_per_dim_se),
    ]
    from ddpm.model import clip_words

    lines.insert(1, f"  p_theta scored: {clip_words(ev.clip)}")
    if ev.neg_elbo_mc is not None and ev.terms:
        label = f"-ELBO, {ev.mc_timesteps} stratified t"
        lines.append(row(label, ev.neg_elbo_mc, ev.neg_elbo_mc_se, "unbiased estimate"))
    for b in ev.iw:
        lines.append(row(f"-log IW bound, K={b.K}", b.neg_log_likelihood, b.se))
    if ev.neg_log_likelihood is not None:
        how = "exact" if ev.log_likelihood_exact else "largest-K IW bound"
        lines.append(row("-log p_theta(x0)", ev.neg_log_likelihood, ev.neg_log_likelihood_se, how))
    if ev.ode is not None:
        o = ev.ode
        div = "exact div" if o.divergence == "exact" else f"Hutchinson K={o.probes}"
        note = f"flow model, not p_theta; {div}, NFE {o.nfe}, {o.seconds:.0f} s"
        lines.append(row("-log p_ODE(x0)", o.neg_log_likelihood, o.neg_log_likelihood_se, note))
        lines.append(row("  ODE bits/dim", o.bits_per_dim, o.bits_per_dim_se))
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


def format_coarse_to_fine(ev) -> str:
    """Where the reverse chain fixes the data: the t at which x0-MSE falls to shares of Var(x0)."""
    from ddpm.likelihood.evaluate import coarse_to_fine

    marks = coarse_to_fine(ev)
    if marks is None:
        return ""
    parts = [
        f"{100 * float(f):g}% by t = {t}" if t is not None else f"{100 * float(f):g}% never"
        for f, t in marks.items()
    ]
    return (
        f"coarse to fine: x0-MSE falls to a share of Var(x0) = {ev.data_var:.4g}: "
        + ", ".join(parts)
        + f" (of T = {ev.T})"
    )


def format_views(v: dict) -> str:
    """The four views of ``ddpm.likelihood.theory.four_views`` as text."""
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


def format_steps(evaluations) -> str:
    """One row per K of ``evaluate_steps_run``: the K-step -ELBO and its terms."""
    head = (
        f"{'K':>6s} {'-ELBO (nats)':>20s} {'bits/dim':>17s} {'L_T':>9s} {'diffusion':>10s} "
        f"{'L_0':>9s} {'seconds':>8s}"
    )
    lines = [head]
    for ev in evaluations:
        t = ev.terms
        lines.append(
            f"{ev.T:>6d} {ev.neg_elbo:>11.4f} ± {ev.neg_elbo_se:<6.4f} "
            f"{ev.bits_per_dim:>8.4f} ± {ev.bits_per_dim_se:<6.4f} {t['prior']:>9.4f} "
            f"{t['diffusion']:>10.4f} {t['decoder']:>9.4f} {ev.seconds:>8.1f}"
        )
    return "\n".join(lines)


def format_sweep(sweep) -> str:
    """The T-sweep as a terminal table and the T at which KL_joint falls below each threshold."""
    from ddpm.likelihood.sweep import THRESHOLDS
    from ddpm.report.theory import sweep_row

    rows = [sweep_row(p) for p in sweep.points]
    cols = list(rows[0])
    for r in rows:
        cols += [c for c in r if c not in cols]
    width = {c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in cols}
    lines = [f"{sweep.name}: the bound against T (nats per example ± SE)"]
    lines.append("  ".join(c.rjust(width[c]) for c in cols))
    lines += ["  ".join(str(r.get(c, "-")).rjust(width[c]) for c in cols) for r in rows]
    for v in sweep.variances:
        for th in THRESHOLDS:
            hit = sweep.first_T_below(v, th)
            what = (
                f"T = {hit['T']} (KL_joint {hit['kl_joint']:.5f} ± {hit['se']:.5f}"
                + ("" if hit["resolved"] else ", within 2 SE of the threshold")
                + ")"
                if hit
                else "not within the sweep"
            )
            lines.append(f"  {v}: KL_joint < {th} nats from {what}")
    return "\n".join(lines)


def theory_request(args: argparse.Namespace, sweep: bool = False):
    """The TheoryRequest of ``ddpm theory``'s flags (a T-sweep: no IW bounds by default)."""
    from ddpm.requests import TheoryRequest

    iw = tuple(args.iw) if args.iw is not None else (() if sweep else (1, 4, 16))
    return TheoryRequest(
        T=tuple(args.diffusion_steps), schedule=args.schedule, variance=tuple(args.variance),
        n=args.num_examples, iw=iw, seed=args.seed, steps=args.respacing,
        spacing=args.timestep_spacing, ode=ode_config(args), dim=args.dim, mean=args.mean,
        std=args.std,
    )  # fmt: skip


def cmd_sweep(args: argparse.Namespace) -> int:
    from ddpm import report
    from ddpm.likelihood import sweep

    subject = args.subject
    request = theory_request(args, sweep=True)
    if subject == "gaussian":
        sw = sweep.sweep_gaussian(request, progress=not args.json)
        out = args.out or Path("reports") / f"sweep_gaussian{args.dim}d"
    else:
        sw = sweep.sweep_mixture(subject, request, progress=not args.json)
        out = args.out or Path("reports") / f"sweep_{Path(subject).stem}"
    paths = report.write_sweep_report(sw, out)
    if args.json:
        print(json.dumps(sw.to_dict(), indent=2))
        return 0
    print(format_sweep(sw))
    for p in paths:
        print(f"wrote {p}")
    return 0


def evaluation_request(args: argparse.Namespace):
    """The EvaluationRequest of ``ddpm evaluate``'s flags."""
    from ddpm.requests import SAMPLERS, EvaluationRequest, QualityRequest

    if (args.samplers is not None or args.eta is not None) and (
        args.respacing is None or args.num_samples is None
    ):
        raise ConfigError(
            "--samplers and --eta apply with --respacing K ... and --num-samples N; add them"
        )
    if args.classifier_dir is not None and args.num_samples is None:
        raise ConfigError(
            "--classifier-dir applies with --num-samples N; add it or drop the option"
        )
    if args.respacing is not None and args.per_example is not None:
        raise ConfigError("--per-example goes with one evaluation: drop it or --respacing")
    if args.respacing is not None and args.ode:
        raise ConfigError("--ode goes with one evaluation: drop it or --respacing")
    estimator = args.estimator or ("exact" if args.mc is None else "mc")
    quality = None
    if args.num_samples is not None:
        quality = QualityRequest(args.num_samples, args.seed, args.classifier_dir)
    return EvaluationRequest(
        data=args.data, split=args.split, n=args.num_examples, estimator=estimator,
        mc_timesteps=args.mc, iw=tuple(args.iw), clip=args.clip_denoised,
        steps=tuple(args.respacing or ()), spacing=args.timestep_spacing,
        samplers=tuple(args.samplers or SAMPLERS), eta=0.0 if args.eta is None else args.eta,
        ode=ode_config(args), quality=quality, seed=args.seed, max_batch=args.max_batch,
    )  # fmt: skip


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ddpm.cli.main import model_of
    from ddpm.jobs.evaluate import evaluate_run

    request = evaluation_request(args)
    res = evaluate_run(
        model_of(args), request, args.out, args.per_example, args.device, progress=not args.json
    )
    if request.steps:
        if args.json:
            doc = json.loads(res.json_path.read_text())
            if res.quality is not None:
                doc["quality_steps"] = json.loads(res.quality_json_path.read_text())["rows"]
            print(json.dumps(doc, indent=2))
        else:
            n = res.evaluations[0].n
            print(f"{args.run}: -ELBO of the K-step respaced process, n = {n} ({args.split})")
            print(format_steps(res.evaluations))
            if res.oracle_evaluations is not None:
                print("the Bayes-optimal model of each K-step process (same x0 and x_t draws):")
                print(format_steps(res.oracle_evaluations))
                print(f"-ELBO vs K beside the Bayes-optimal model: {res.oracle_path}")
            print(f"bits/dim vs K: {res.steps_path}\nJSON: {res.json_path}")
            if res.quality is not None:
                from ddpm.cli.quality import format_quality_steps

                print(format_quality_steps(res.quality))
                print(f"quality vs K: {res.quality_png_path}\nJSON: {res.quality_json_path}")
        return 0
    if not res.is_main:  # another process under torchrun: rank 0 reports
        return 0
    if args.json:
        doc = json.loads(res.json_path.read_text())
        print(json.dumps(doc, indent=2))
    else:
        print(format_evaluation(res.evaluation))
        print(f"  weights scored: {res.weights}")
        print(format_coarse_to_fine(res.evaluation))
        if res.quality is not None:
            from ddpm.cli.quality import format_quality

            print(format_quality(res.quality))
        if res.per_timestep_path is not None:
            print(f"per-timestep plot: {res.per_timestep_path}")
        print(f"JSON: {res.json_path}")
        if res.per_example_path is not None:
            print(f"per-example -ELBO: {res.per_example_path}")
        if res.mse_path is not None:
            print(f"prediction errors per timestep: {res.mse_path}")
    return 0


def cmd_theory(args: argparse.Namespace) -> int:
    from ddpm import report
    from ddpm.likelihood import theory

    subject = args.subject
    if args.vae is not None:  # view 3: DDPM vs VAE, on any data
        from ddpm.cli.vae import report_view3
        from ddpm.requests import VaeEvaluationRequest

        out = args.out or Path(subject) / "theory"
        request = VaeEvaluationRequest(seed=args.seed)
        return report_view3(Path(subject), args.vae, out, request, device=args.device,
                            as_json=args.json)  # fmt: skip
    several = len(args.diffusion_steps) > 1 or len(args.variance) > 1
    if Path(subject).is_dir() and (args.sweep or several):
        raise ConfigError(
            f"{subject}: a run's process is its own (its T and variance); a T-sweep "
            "(--sweep) is for gaussian, gmm8 or a mixture .json"
        )
    if several and not args.sweep:
        raise ConfigError(
            "several --diffusion-steps or --variance values make a T-sweep: add --sweep, or "
            "give one of each"
        )
    if args.sweep:
        if args.respacing is not None or args.timestep_spacing is not None:
            raise ConfigError(
                "--respacing does not combine with a T-sweep (--sweep): the sweep's points are "
                "the --diffusion-steps values"
            )
        return cmd_sweep(args)
    if args.respacing is not None and subject != "gaussian":
        raise ConfigError(
            f"--respacing applies to `ddpm theory gaussian` (got subject {subject!r}); "
            "for a trained run use `ddpm evaluate DIR --respacing K ...`"
        )
    request = theory_request(args)
    if Path(subject).is_dir():  # the process is the run's own: one T and variance are its
        request = dataclasses.replace(request, T=request.T[:1], variance=request.variance[:1])
    paths = None  # written under the run folder's lock when the subject is a run
    if subject == "gaussian":
        res = theory.theory_gaussian(request, progress=not args.json)
        from ddpm.process.respace import steps_label

        k = (
            ""
            if args.respacing is None
            else f"_K{steps_label(args.respacing, args.timestep_spacing)}"
        )
        out = args.out or Path("reports") / f"theory_gaussian{args.dim}d{k}"
    elif Path(subject).is_dir():
        from ddpm.loader import load
        from ddpm.runs import folder as rundir
        from ddpm.training.dist import pick_device

        out = args.out or Path(subject) / "theory"
        inside = rundir.inside(subject, out)
        with rundir.locked(subject, "theory") if inside else contextlib.nullcontext():
            model = load(subject, device=pick_device(args.device))
            res = theory.theory_run(model, request, progress=not args.json)
            paths = report.write_theory_report(res, out)
            if inside:
                rundir.record(subject, paths, "theory")
    else:
        res = theory.theory_mixture(subject, request, progress=not args.json)
        out = args.out or Path("reports") / f"theory_{Path(subject).stem}"
    if paths is None:
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
        b = res.gap_band()
        print(
            f"half of the gap lies in t = {b['t_lo']}..{b['t_hi']} of {res.subject.T}: "
            f"{b['gap']:.4f} ± {b['gap_se']:.4f} nats ({100 * b['share']:.0f}% of the gap)"
        )
    if res.closed_form is not None:
        cf = res.closed_form
        print(f"closed form (expectations over q(x0), {cf['steps']}-step process):")
        for key in (
            "neg_elbo",
            "neg_log_likelihood",
            "entropy",
            "kl_joint",
            "kl_marginal",
            "posterior_gap",
            "ode_neg_log_likelihood",
        ):
            if key in cf:
                print(f"  {key:<23s} {_fmt(cf[key])}")
    for p in paths:
        print(f"wrote {p}")
    return 0
