"""Headline numbers and claim checks of the reproduce experiments (`summarize`), also logged to
MLflow as metrics and written up by tasks/reproduce/report.py."""

from __future__ import annotations

import math

import numpy as np


def final_value(curve: dict, key: str) -> float:
    return curve["points"][-1].get(key, math.nan)


def _superfluous(by: dict) -> dict[str, float]:
    """The regularization claim: the largest latent size overfits no more than the others."""
    aevb = {k: c for (m, k), c in by.items() if m == "aevb"}
    if len(aevb) < 2:
        return {}
    k_max = max(aevb)
    gaps = {
        k: final_value(c, "train_bound") - final_value(c, "test_bound") for k, c in aevb.items()
    }
    tests = [p["test_bound"] for p in aevb[k_max]["points"]]
    best = max(final_value(c, "test_bound") for c in aevb.values())
    return {
        "claim_superfluous_gap_excess": gaps[k_max]
        - float(np.median([g for k, g in gaps.items() if k != k_max])),
        "claim_superfluous_test_drop": max(tests) - tests[-1],
        "claim_largest_latent_minus_best_test_bound": final_value(aevb[k_max], "test_bound") - best,
    }


def _paired(a: dict, b: dict, split: str) -> tuple[float, float]:
    """Mean and standard error of the per-row difference a - b (same rows); unpaired if no rows."""
    ra, rb = a.get("rows", {}).get(split), b.get("rows", {}).get(split)
    if ra and rb and len(ra) == len(rb) > 1:
        d = np.subtract(ra, rb)
        return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    return final_value(a, f"{split}_log_marginal") - final_value(
        b, f"{split}_log_marginal"
    ), math.nan


def summarize(results: dict) -> dict[str, float]:
    """Headline numbers (also the MLflow metrics) and the claim checks, as a flat dict."""
    out: dict[str, float] = {}
    if "fig2" in results:
        by = {(c["method"], c["latent_dim"]): c for c in results["fig2"]["curves"]}
        leads = []
        for (method, k), c in by.items():
            out[f"fig2_{method}_z{k}_test_bound"] = final_value(c, "test_bound")
            out[f"fig2_{method}_z{k}_train_bound"] = final_value(c, "train_bound")
            if method == "aevb" and ("wake_sleep", k) in by:
                ws = by[("wake_sleep", k)]["points"]
                leads += [
                    p["test_bound"] - q["test_bound"] for p, q in zip(c["points"], ws, strict=True)
                ]
        out["claim_aevb_minus_ws_min_test_gap"] = min(leads) if leads else math.nan
        out["claim_aevb_minus_ws_final_min_test_gap"] = min(
            (
                final_value(c, "test_bound") - final_value(by[("wake_sleep", k)], "test_bound")
                for (m, k), c in by.items()
                if m == "aevb" and ("wake_sleep", k) in by
            ),
            default=math.nan,
        )
        out.update(_superfluous(by))
    if "fig3" in results:
        by = {(c["method"], c["num_train"]): c for c in results["fig3"]["curves"]}
        for (method, n), c in by.items():
            for split in ("train", "test"):
                out[f"fig3_{method}_n{n}_{split}_log_marginal"] = final_value(
                    c, f"{split}_log_marginal"
                )
        n_small = min(n for _, n in by)
        diff, se = _paired(by[("aevb", n_small)], by[("mcem", n_small)], "test")
        out["claim_aevb_minus_mcem_small_n_test"] = diff
        out["claim_aevb_minus_mcem_small_n_test_se"] = se
    if "gradient_variance" in results:
        for where in ("init", "trained"):
            r = results["gradient_variance"][where]
            out[f"gradvar_{where}_encoder_A"] = r["A"]["encoder"]
            out[f"gradvar_{where}_encoder_B"] = r["B"]["encoder"]
            out[f"claim_gradvar_{where}_ratio_B_over_A"] = r["B"]["encoder"] / r["A"]["encoder"]
    if "full_vb" in results:
        for method in ("map", "full_vb"):
            for key, value in results["full_vb"][method].items():
                out[f"vb_{method}_{key}"] = value
    return out
