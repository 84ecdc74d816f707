"""The reproduce report: claim checks, `report.md`, `results.json`/`results.csv`, MLflow logging.

`summarize` flattens the experiments' results into headline numbers and claim checks (also the
MLflow metrics); `render_markdown` writes them up with the tables and figures; `log_report` logs
settings, metrics and every report file to MLflow (experiment "aevb-reproduce") via `tasks.tracking`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from tasks.reproduce import checks
from tasks.reproduce.checks import figure_flags
from tasks.reproduce.figures import LABELS, MIN_CELL_PX
from tasks.reproduce.settings import DATA_NOTES, ReproduceSettings
from tasks.reproduce.summary import final_value, summarize

EXPERIMENT = "aevb-reproduce"


def _fmt(v: Any, digits: int = 2) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _claims(summary: dict[str, float]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "**holds**" if ok else "**does not hold here**"

    lines = []
    if "claim_aevb_minus_ws_min_test_gap" in summary:
        g = summary["claim_aevb_minus_ws_min_test_gap"]
        lines.append(
            f"- AEVB's test bound is above wake-sleep's at every evaluated budget and latent size: "
            f"{verdict(g > 0)} (smallest lead {g:.2f} nats; smallest lead at the last budget "
            f"{summary['claim_aevb_minus_ws_final_min_test_gap']:.2f} nats)."
        )
    if "claim_superfluous_gap_excess" in summary:
        gap, drop = summary["claim_superfluous_gap_excess"], summary["claim_superfluous_test_drop"]
        d = summary["claim_largest_latent_minus_best_test_bound"]
        lines.append(
            "- Superfluous latent dimensions do not cause overfitting (largest latent size: its "
            "train-test gap exceeds the other sizes' median gap by less than 1 nat, and its test "
            f"bound is still at its best): {verdict(gap < 1.0 and drop < 0.5)} (gap excess "
            f"{gap:.2f} nats, drop from its best {drop:.2f}; its test bound is {d:.2f} nats from "
            "the best latent size at this budget, since the largest model also learns most slowly)."
        )
    if "claim_aevb_minus_mcem_small_n_test" in summary:
        d, se = (
            summary["claim_aevb_minus_mcem_small_n_test"],
            summary["claim_aevb_minus_mcem_small_n_test_se"],
        )
        sig = (
            ""
            if math.isnan(se)
            else f" ± {se:.2f} (paired standard error; {'' if abs(d) > 2 * se else 'not '}significant at 2 se)"
        )
        lines.append(
            "- On the small training set, MCEM's test marginal likelihood trails AEVB's: "
            f"{verdict(d > 0)} (AEVB - MCEM = {d:.2f}{sig} nats at the last budget)."
        )
    for where in ("init", "trained"):
        key = f"claim_gradvar_{where}_ratio_B_over_A"
        if key in summary:
            lines.append(
                f"- Estimator B has lower gradient variance than A ({where} parameters): "
                f"{verdict(summary[key] < 1)} (ratio B/A {summary[key]:.2f})."
            )
    return lines


def _flagged(results: dict, figure: str) -> list[str]:
    """The "Flagged" note printed under ``figure`` (nothing when its checks pass)."""
    flags = figure_flags(results).get(figure, [])
    if not flags:
        return []
    return ["> **Flagged:** " + "; ".join(flags) + ".", ""]


def _flag_summary(results: dict) -> list[str]:
    flags = figure_flags(results)
    if not flags:
        return ["No figure is flagged by the degeneracy checks (see *Figure checks* below).", ""]
    return [
        f"**{sum(len(v) for v in flags.values())} flag(s) on {len(flags)} figure(s)** "
        "(" + ", ".join(f"`{f}`" for f in flags) + "): read the notes beside them before "
        "reading the figures as results.",
        "",
    ]


def _checks_section() -> list[str]:
    k = checks
    return [
        "## Figure checks",
        "",
        "Every figure is checked for degenerate content, and a failed check is printed as a "
        "**Flagged** note beside it:",
        "",
        f"- unused latent axes: an axis whose mean KL(q(z_k|x) || N(0, 1)) on the test rows is "
        f"at most {k.KL_ACTIVE_NATS} nats is inactive (q is the prior there);",
        f"- collapsed Gaussian decoder variance: more than {k.FLOOR_SHARE:.0%} of the decoder stds "
        f"within {k.FLOOR_MARGIN}x the clip floor;",
        "- noisy or inverted samples: mean sample intensity off the data mean by more than "
        f"{k.INTENSITY_TOLERANCE} of min(mean, 1 - mean);",
        "- a manifold of nearly identical cells: mean correlation of the cells with the grid's "
        f"mean cell above {k.SIMILARITY_MAX} (the same picture up to brightness);",
        f"- a learning curve with fewer than {k.MIN_BUDGETS} evaluated budgets.",
        "",
        "Image grids are drawn pixel for pixel, every cell upscaled (nearest neighbour) to at "
        f"least {MIN_CELL_PX} pixels.",
        "",
    ]


def _curve_rows(curves: list[dict], key: str, extra: str | None = None) -> list[list[Any]]:
    rows = []
    for c in curves:
        row = [c["latent_dim"], c["num_train"], LABELS[c["method"]], c["learning_rate"]]
        for split in ("train", "test"):
            value, se = final_value(c, f"{split}_{key}"), final_value(c, f"{split}_{key}_se")
            row.append(value if math.isnan(se) else f"{value:.2f} ± {se:.2f}")
        if extra is not None:
            row.append(c.get(extra, math.nan))
        rows.append(row + [int(c["points"][-1]["samples"]), final_value(c, "seconds")])
    return rows


def _header(results: dict, s: ReproduceSettings, seconds: dict[str, float]) -> list[str]:
    summary = summarize(results)
    return [
        f"# Reproducing Kingma & Welling (2013): {s.mode} mode",
        "",
        f"Generated by `aevb reproduce --{s.mode}` (seed {s.seed}). Wall time per experiment: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + ".",
        "",
        *_flag_summary(results),
        "## Claims",
        "",
        *_claims(summary),
        "",
        "## Setup and caveats",
        "",
        "- Full MNIST and Frey Face cannot be downloaded here. Binary experiments use "
        f"**{s.dataset}** ({DATA_NOTES[s.dataset]}), stochastically binarized once with the seed; "
        "the Gaussian decoder (Frey Face in the paper) gets scikit-learn's 8x8 digits, dequantized "
        "to continuous intensities (16 v + u) / 17, u ~ U(0, 1).",
        "- Architecture and optimiser as in Sec. 5 (tanh MLP, Adagrad, weight decay 1 = N(0, I) "
        "prior, N(0, 0.01) init, M = 100, L = 1), with smaller hidden layers and budgets up to "
        f"{max(s.fig2_budgets):,} samples (the paper: up to 10^8) - curves are early parts of the paper's.",
        "- *Training samples evaluated* counts datapoints entering a parameter update: M per AEVB "
        "step, M per wake-sleep wake update (plus M dreams per sleep update), M per MCEM weight "
        "update (5 updates per HMC round).",
        "- Step sizes: "
        + (
            "picked per method and setting from "
            f"{list(s.lr_candidates)} by a {s.pilot_samples:,}-sample pilot (Sec. 5)."
            if s.select_lr
            else "fixed at Adagrad 0.02 (no pilot runs in quick mode)."
        ),
        "",
    ]


def _fig2_section(results: dict) -> list[str]:
    return [
        "## Fig. 2 analogue: lower bound vs training samples evaluated",
        "",
        f"{results['fig2']['data']}; hidden units {results['fig2']['hidden']}. Solid: train, dashed: test.",
        "",
        "![Fig. 2](fig2_bound_vs_samples.png)",
        "",
        *_flagged(results, "fig2_bound_vs_samples.png"),
        _table(
            [
                "latent",
                "N",
                "method",
                "step size",
                "train bound",
                "test bound",
                "samples",
                "seconds",
            ],
            _curve_rows(results["fig2"]["curves"], "bound"),
        ),
        "",
    ]


def _fig3_section(results: dict) -> list[str]:
    r = results["fig3"]
    return [
        "## Fig. 3 analogue: marginal log-likelihood vs training samples evaluated",
        "",
        f"{r['data']}; {r['latent_dim']}-D latent, {r['hidden']} hidden units; estimator: {r['estimator']}. "
        "The IS column is importance sampling with the model's own q(z|x) (K = 1000) on the same "
        "test rows, a cross-check (MCEM has no recognition model).",
        "",
        "![Fig. 3](fig3_marginal_likelihood.png)",
        "",
        *_flagged(results, "fig3_marginal_likelihood.png"),
        _table(
            [
                "latent",
                "N",
                "method",
                "step size",
                "train log p(x)",
                "test log p(x)",
                "test IS",
                "samples",
                "seconds",
            ],
            _curve_rows(r["curves"], "log_marginal", "is_test_log_marginal"),
        ),
        "",
    ]


def _variance_section(results: dict) -> list[str]:
    r = results["gradient_variance"]
    rows = [
        [
            where,
            r[where]["A"]["encoder"],
            r[where]["B"]["encoder"],
            r[where]["B"]["encoder"] / r[where]["A"]["encoder"],
            r[where]["A"]["decoder"],
            r[where]["B"]["decoder"],
        ]
        for where in ("init", "trained")
    ]
    return [
        "## Estimator variance: SGVB estimator A vs B",
        "",
        f"Trace of the covariance of the minibatch gradient over {r['draws']} noise draws, same "
        f"parameters and minibatch ({r['batch']} rows), {r['latent_dim']}-D latent, common random "
        "numbers; 'trained' is after "
        f"{r['trained_samples']:,} AEVB samples. The decoder gradient does not involve the KL "
        "term, so it is the same under A and B.",
        "",
        "![variance](gradient_variance.png)",
        "",
        _table(["parameters", "encoder A", "encoder B", "B/A", "decoder A", "decoder B"], rows),
        "",
    ]


def _manifolds_section(results: dict) -> list[str]:
    md: list[str] = []
    md += ["## Figs. 4 and 5 analogues: learned manifolds and samples", ""]
    for name, r in results["manifolds"].items():
        md += [
            f"![manifold {name}](fig4_manifold_{name}.png)",
            "",
            *_flagged(results, f"fig4_manifold_{name}.png"),
            f"{name}: {r['data']}, {r['likelihood']} decoder, {r['hidden']} hidden units, "
            f"{int(r['samples']):,} samples; train bound {_fmt(r['train_bound'])}, "
            f"test bound {_fmt(r['test_bound'])} nats"
            + (
                f"; {r['grid'][0]} x {r['grid'][1]} cells of {r['cell_px']} px"
                if "grid" in r
                else ""
            )
            + ".",
            "",
        ]
    if "fig2" in results:
        md += [
            "Random samples (decoder means for z ~ p(z)) of the Fig. 2 AEVB models:",
            "",
            "![Fig. 5](fig5_samples.png)",
            "",
            *_flagged(results, "fig5_samples.png"),
        ]
    return md


def _full_vb_section(results: dict) -> list[str]:
    r = results["full_vb"]
    keys = [
        "train_elbo",
        "test_elbo",
        "train_log_marginal",
        "test_log_marginal",
        "test_predictive_log_marginal",
    ]
    rows = [[m] + [r[m].get(k, math.nan) for k in keys] for m in ("map", "full_vb")]
    return [
        "## Full VB over theta (App. F) vs MAP",
        "",
        f"{r['data']}; N = {r['num_train']} training rows, {r['latent_dim']}-D latent, "
        f"{r['hidden']} hidden units, up to {r['epochs']} epochs with early stopping on a "
        "500-row validation split. Bound and log p(x) (IS) at the MAP theta / at the mean of "
        f"q(theta); the predictive column averages p(x|theta) over {r['theta_draws']} draws theta ~ q(theta), "
        f"each by IS with K = {r['importance']}. "
        f"Median posterior std of the decoder weights: {r['full_vb']['median_theta_std']:.3f}.",
        "",
        _table(
            [
                "method",
                "train bound",
                "test bound",
                "train log p(x)",
                "test log p(x)",
                "test predictive",
            ],
            rows,
        ),
        "",
    ]


def render_markdown(results: dict, settings: ReproduceSettings, seconds: dict[str, float]) -> str:
    md = _header(results, settings, seconds)
    sections = {"fig2": _fig2_section, "fig3": _fig3_section,
                "gradient_variance": _variance_section, "manifolds": _manifolds_section,
                "full_vb": _full_vb_section}  # fmt: skip
    for name, section in sections.items():
        if name in results:
            md += section(results)
    return "\n".join(md + _checks_section())


def write_report(
    results: dict, settings: ReproduceSettings, out_dir: str, seconds: dict[str, float]
) -> str:
    """report.md + results.json + results.csv in ``out_dir``; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": settings.to_dict(),
        "seconds": seconds,
        "summary": summarize(results),
        "flags": figure_flags(results),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["metric", "value"])
        writer.writerows(sorted(summarize(results).items()))
    path = out / "report.md"
    path.write_text(render_markdown(results, settings, seconds))
    return str(path)


def log_report(out_dir: str, settings: ReproduceSettings, results: dict) -> str:
    """Log settings, headline metrics and every report file to MLflow; returns the run id."""
    from tasks import tracking

    run_id = tracking.start_run(
        EXPERIMENT, f"reproduce-{settings.mode}", tags={"mode": settings.mode}
    )
    try:
        tracking.log_params(run_id, settings.to_dict())
        tracking.log_metrics(
            run_id, {k: v for k, v in summarize(results).items() if math.isfinite(v)}
        )
        for f in sorted(Path(out_dir).iterdir()):
            if f.is_file():
                tracking.log_artifact(run_id, str(f))
    except Exception:
        tracking.end_run(run_id, failed=True)
        raise
    tracking.end_run(run_id)
    return run_id


__all__ = ["EXPERIMENT", "log_report", "render_markdown", "summarize", "write_report"]
