"""render.plots: the latency CDF and the token histograms pick each configuration's rows by mask (no copy of a
large frame) and draw the very pictures of the groupby-based drawing they replaced, byte for byte."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sentech_eval.render import plots


def rows(seed: int = 0, n: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ok = rng.random(n) > 0.1
    return pd.DataFrame(
        {
            "status": np.where(ok, "ok", "error"),
            "latency_s": np.where(ok & (rng.random(n) > 0.05), rng.lognormal(-1, 0.5, n), np.nan),
            "prompt_tokens": np.where(ok, rng.integers(5, 40, n), np.nan),
            "completion_tokens": np.where(ok & (rng.random(n) > 0.1), rng.integers(1, 200, n), np.nan),
            "_config": rng.choice([2, 0, 1], n),  # first seen in an order that is not sorted
        }
    )


def groupby_latency_cdf(results: pd.DataFrame, label_of: dict, key: str = "_config") -> str | None:
    """The latency CDF as drawn before (copying the ok rows, iterating the groupby)."""
    ok = results[(results["status"] == "ok") & results["latency_s"].notna()]
    fig, ax = plots.plt.subplots(figsize=(5.5, 3.4))
    for i, (cfg, part) in enumerate(ok.groupby(key, sort=False)):
        if i >= plots.MAX_LINES:
            break
        x = np.sort(part["latency_s"].to_numpy(dtype=float))
        y = np.arange(1, x.size + 1) / x.size
        if x.size > plots.CDF_POINTS:
            keep = np.unique(np.linspace(0, x.size - 1, plots.CDF_POINTS).astype(int))
            x, y = x[keep], y[keep]
        ax.step(x, y, where="post", label=label_of.get(cfg, str(cfg)))
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("fraction of requests ≤ x")
    ax.set_title("Latency CDF")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return plots.to_data_uri(fig)


def groupby_token_histograms(results: pd.DataFrame, label_of: dict, key: str = "_config") -> str | None:
    """The token histograms as drawn before."""
    ok = results[results["status"] == "ok"]
    columns = [c for c in ("prompt_tokens", "completion_tokens") if c in ok and ok[c].notna().any()]
    fig, axes = plots.plt.subplots(1, len(columns), figsize=(5.0 * len(columns), 3.2), squeeze=False)
    for ax, col in zip(axes[0], columns):
        values = ok[col].dropna().to_numpy(dtype=float)
        bins = np.histogram_bin_edges(values, bins=min(30, max(1, np.unique(values).size)))
        for i, (cfg, part) in enumerate(ok.groupby(key, sort=False)):
            if i >= plots.MAX_LINES:
                break
            ax.hist(
                part[col].dropna().to_numpy(dtype=float),
                bins=bins,
                histtype="step",
                linewidth=1.5,
                label=label_of.get(cfg, str(cfg)),
            )
        ax.set_xlabel(col.replace("_", " "))
        ax.set_ylabel("rows")
        ax.set_title(col.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return plots.to_data_uri(fig)


def test_latency_cdf_and_token_histograms_are_the_groupby_pictures():
    labels = {0: "t=0.0", 1: "t=0.7", 2: "t=1.3"}
    for seed in range(3):
        results = rows(seed, n=3000 if seed else 9000)  # 9,000 rows: more than CDF_POINTS per configuration
        assert plots.latency_cdf(results, labels) == groupby_latency_cdf(results, labels)
        assert plots.token_histograms(results, labels) == groupby_token_histograms(results, labels)


def test_no_ok_row_with_a_latency_draws_nothing():
    results = rows(1).assign(status="error")
    assert plots.latency_cdf(results, {}) is None
    assert plots.token_histograms(results, {}) is None
