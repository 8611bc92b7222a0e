"""The run report page: one self-contained HTML page about a trained model.

The page shows what a reader of [Ho20] wants to see of one model, in this order: a summary, the
training loss, held-out validation, samples, the forward process q(x_t | x_0) on a test example,
the reverse chain (x_t and the predicted x_0 along Algorithm 2), the -ELBO per timestep, bits/dim
against the number of sampling steps, the four views of the objective, the evaluation table and
the configuration. ``ddpm.jobs.report`` computes the values; this module lays them out.

Nothing is fetched: every image is a PNG embedded as base64 and the page has no script.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from ddpm.likelihood.evaluate import Evaluation

REPORT = "report.html"


@dataclass(frozen=True)
class RunReport:
    path: Path  # the HTML page
    evaluation: Evaluation  # the evaluation shown on the page
    evaluation_reused: bool  # True when read from the model folder's eval_test.json
    seconds: float


def flat_config(cfg: dict) -> list[dict]:
    return [
        {"setting": f"{section}.{key}", "value": json.dumps(value)}
        for section, fields in cfg.items()
        for key, value in fields.items()
    ]


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def evaluation_rows(ev: Evaluation) -> list[dict]:
    rows = [
        {"quantity": "-ELBO (nats per example)", "value": ev.neg_elbo, "SE": ev.neg_elbo_se},
        {"quantity": "  L_T prior", "value": ev.terms["prior"], "SE": ""},
        {"quantity": "  L_1..L_(T-1) diffusion KLs", "value": ev.terms["diffusion"], "SE": ""},
        {"quantity": "  L_0 decoder", "value": ev.terms["decoder"], "SE": ""},
        {"quantity": "nats/dim", "value": ev.nats_per_dim, "SE": ev.nats_per_dim_se},
        {"quantity": "bits/dim", "value": ev.bits_per_dim, "SE": ev.bits_per_dim_se},
    ]
    for b in ev.iw:
        rows.append(
            {"quantity": f"-log IW bound, K={b.K}", "value": b.neg_log_likelihood, "SE": b.se}
        )
    for key, label in (
        ("entropy", "H(q(x0)) data entropy"),
        ("kl_joint", "KL joint"),
        ("kl_marginal", "KL marginal"),
    ):
        if getattr(ev, key) is not None:
            value, se = getattr(ev, key), getattr(ev, f"{key}_se")
            rows.append({"quantity": label, "value": value, "SE": se})
    return rows


def views_rows(views: dict) -> list[dict]:
    ml, chain = views["maximum_likelihood"], views["kl_chain"]
    vae, easy = views["hierarchical_vae"], views["many_easy_problems"]
    iw = ", ".join(f"K={b['K']}: {b['neg_log_likelihood']:.4f}" for b in ml["iw"]) or "not run"
    holds = {None: "density unknown", True: "holds", False: "violated"}[chain["holds"]]
    return [
        {
            "view": "1. maximum likelihood",
            "numbers": f"-ELBO {ml['neg_elbo']:.4f} nats; -log IW bounds {iw}",
        },
        {"view": "2. KL chain", "numbers": f"KL_joint >= KL_marginal >= 0: {holds}"},
        {
            "view": "3. hierarchical VAE",
            "numbers": f"rate L_T {vae['rate_prior']:.4f} + diffusion KLs "
            f"{vae['diffusion_kls']:.4f} + distortion L_0 {vae['distortion_decoder']:.4f}",
        },
        {
            "view": "4. many easy problems",
            "numbers": f"T = {easy['T']}; largest term at t = {easy['largest_term_t']}; "
            f"first 10% of steps hold {100 * easy['share_in_first_tenth_of_steps']:.0f}% "
            f"of the diffusion KLs; {easy['steps_holding_90_percent']} steps hold 90%",
        },
    ]
