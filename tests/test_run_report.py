"""`ddpm report RUN`: the page's content, and the page loaded in a real browser."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ddpm import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig, train
from ddpm.cli.main import main
from ddpm.jobs.report import write_run_report
from ddpm.requests import EvaluationRequest
from ddpm.runs.logs import read_loss_log, read_validation_log, run_best_step

SECTIONS = [
    "Summary",
    "Training loss",
    "Held-out validation",
    "Samples",
    "Forward process",
    "Reverse process",
    "-ELBO per timestep",
    "bits/dim against the number of steps",
    "The four views",
    "Evaluation",
    "Configuration",
]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits"
    cfg = RunConfig(
        diffusion=DiffusionConfig(T=10),
        model=ModelConfig(channels=8, channel_mults=(1, 2), attn_resolutions=()),
        data=DataConfig(name="digits"),
        train=TrainConfig(steps=30, batch_size=16, log_every=5, num_samples=4),
    )
    train(cfg, out, progress=False)
    return out


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_holds_every_section_and_only_embedded_pngs(digits_run, capsys):
    assert main(["report", str(digits_run), "-n", "8"]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (digits_run / "report.html").read_text()
    headings = [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", page)]
    for name in SECTIONS:
        assert any(h.startswith(name) for h in headings), (name, headings)
    pngs = _images(page)
    assert len(pngs) == 5  # loss, samples, forward, trajectory, per-t; steps is a note here
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # The numbers on the page are the evaluation's numbers.
    rep = write_run_report(digits_run, EvaluationRequest(n=8))
    assert f"{rep.evaluation.bits_per_dim:.4f}" in page
    assert rep.evaluation.n == 8 and not rep.evaluation_reused


def test_report_reuses_a_fresh_evaluation_and_plots_bits_vs_steps(digits_run):
    ev = write_run_report(digits_run, EvaluationRequest(n=4)).evaluation
    doc = ev.to_dict()
    doc["steps"] = [
        {"K": 2, "bits_per_dim": 5.0, "bits_per_dim_se": 0.1},
        {"K": 10, "bits_per_dim": 4.0, "bits_per_dim_se": 0.1},
    ]
    (digits_run / "eval_test.json").write_text(json.dumps(doc))
    rep = write_run_report(digits_run, EvaluationRequest(n=4))
    assert rep.evaluation_reused and rep.evaluation.neg_elbo == ev.neg_elbo
    assert len(_images(rep.path.read_text())) == 6  # now with the bits/dim-vs-steps figure
    (digits_run / "eval_test.json").unlink()


def test_loss_log_skips_a_line_cut_short(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "lo')
    assert read_loss_log(log) == ([1, 2], [0.5, 0.25])


def test_report_of_a_validating_run_plots_the_validation_curve_and_the_kept_step(tmp_path):
    from ddpm.report.plots import validation_figure

    out = tmp_path / "val"
    cfg = RunConfig(
        diffusion=DiffusionConfig(T=5),
        model=ModelConfig(channels=8, attn_resolutions=()),
        data=DataConfig(name="digits"),
        train=TrainConfig(steps=9, batch_size=16, log_every=3, num_samples=4, val_every=3,
                          val_timesteps=2),
    )  # fmt: skip
    res = train(cfg, out, progress=False)
    steps, bpd, se = read_validation_log(out / "log.jsonl")
    assert steps == [3, 6, 9] and len(bpd) == len(se) == 3
    assert run_best_step(out) == res.validation.best_step == steps[bpd.index(min(bpd))]
    fig = validation_figure(steps, bpd, se, run_best_step(out))
    line, kept = fig.axes[0].lines
    assert list(line.get_xdata()) == steps and list(line.get_ydata()) == bpd
    assert list(kept.get_xdata()) == [res.validation.best_step] and kept.get_ydata()[0] == min(bpd)
    rep = write_run_report(out, EvaluationRequest(n=4))
    assert len(_images(rep.path.read_text())) == 6  # the validation curve beside the five


def test_report_of_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a ddpm run folder" in err[0]


# --- the page in a real browser ----------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Injected into a copy of the page, first in <head>: records every error (script errors and
# resources that fail to load, which fire 'error' in the capture phase) and console.error
# calls, then on load writes them and the state of every <img> into the DOM for --dump-dom.
PROBE = """<script>
window.__errors = [];
const __push = m => window.__errors.push(String(m));
window.addEventListener('error', e => __push(e.message || e.target.src), true);
const __err = console.error;
console.error = (...a) => { __push(a.join(' ')); __err(...a); };
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({images: imgs.length, broken: bad, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"
)
def test_report_in_headless_chromium(digits_run, tmp_path):
    write_run_report(digits_run, EvaluationRequest(n=8))
    page = (digits_run / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout)
    assert found, dom.stderr[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    assert probe == {"images": 5, "broken": 0, "errors": []}
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", probed.as_uri())
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
