"""Plots for the HTML report, as base64 PNG data URIs (matplotlib Agg backend, no display).

Each function takes the summary and/or results frames and returns a ``data:image/png;base64,…``
string, or None when there is nothing to draw.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False  # labels are text (a model name may hold "$"), never maths
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sentech_eval.escaping import terminal_text  # noqa: E402

DPI = 80
MAX_LINES = 12
CDF_POINTS = 4000  # a latency CDF of more requests is drawn through this many of its exact points


def as_plain_text(fig: plt.Figure) -> None:
    """Every text of ``fig`` (titles, labels, legends, ticks) as plain text: a model or dataset name is data, so
    its control characters are shown escaped; ``$`` is never maths (``text.parse_math`` is off for every plot)."""
    for text in fig.findobj(matplotlib.text.Text):
        raw = text.get_text()
        if raw and terminal_text(raw) != raw:
            text.set_text(terminal_text(raw))


def png_bytes(fig: plt.Figure, **savefig: object) -> bytes:
    """``fig`` as PNG bytes (its texts as plain text; a glyph the font lacks is drawn as a box, not warned
    about on the terminal); the figure is closed."""
    as_plain_text(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        fig.savefig(buf, format="png", **savefig)
    plt.close(fig)
    return buf.getvalue()


def to_data_uri(fig: plt.Figure) -> str:
    """Render ``fig`` as a PNG data URI and close it."""
    png = png_bytes(fig, dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _pretty(col: str) -> str:
    return col.removeprefix("score_")


def _numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values.dropna().infer_objects())


def score_vs_param(summary: pd.DataFrame, score: str, param: str, others: Sequence[str]) -> str | None:
    """Mean ``score`` (with its CI as error bars) against swept ``param``; one line per setting of ``others``."""
    mean, low, high = f"{score}_mean", f"{score}_ci_low", f"{score}_ci_high"
    if mean not in summary or summary[mean].notna().sum() == 0:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    groups = summary.groupby(list(others), dropna=False, sort=True) if others else [((), summary)]
    numeric = _numeric(summary[param])
    for i, (key, part) in enumerate(groups):
        if i >= MAX_LINES:
            break
        part = part.sort_values(param)
        x = part[param].to_numpy(dtype=float) if numeric else np.arange(len(part))
        y = part[mean].to_numpy(dtype=float)
        err = np.vstack([y - part[low].to_numpy(dtype=float), part[high].to_numpy(dtype=float) - y])
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{o}={k}" for o, k in zip(others, key)) or None
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker="o", capsize=4, label=label)
        if not numeric:
            ax.set_xticks(x, [str(v) for v in part[param]])
    ax.set_xlabel(param)
    ax.set_ylabel(f"{_pretty(score)} (mean, 95% CI)")
    ax.set_title(f"{_pretty(score)} vs {param}")
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return to_data_uri(fig)


def heatmap(summary: pd.DataFrame, score: str, row_param: str, col_param: str) -> str | None:
    """Mean ``score`` over two swept parameters (averaged over any other swept parameter)."""
    mean = f"{score}_mean"
    if mean not in summary or summary[mean].notna().sum() == 0:
        return None
    table = summary.pivot_table(index=row_param, columns=col_param, values=mean, aggfunc="mean", dropna=False)
    fig, ax = plt.subplots(figsize=(1.2 * table.shape[1] + 2.5, 0.6 * table.shape[0] + 1.8))
    data = table.to_numpy(dtype=float)
    image = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
    ax.set_xlabel(col_param)
    ax.set_ylabel(row_param)
    finite = data[np.isfinite(data)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (r, c), value in np.ndenumerate(data):
        if np.isfinite(value):
            ax.text(
                c, r, f"{value:.2f}", ha="center", va="center", fontsize=8, color="black" if value > middle else "white"
            )
    fig.colorbar(image, ax=ax, label=_pretty(score))
    ax.set_title(f"{_pretty(score)} by {row_param} × {col_param}")
    return to_data_uri(fig)


def score_bars(summary: pd.DataFrame, scores: Sequence[str], labels: Sequence[str]) -> str | None:
    """Every score's mean with CI, one group of bars per configuration (used when nothing is swept)."""
    scores = [s for s in scores if f"{s}_mean" in summary and summary[f"{s}_mean"].notna().any()]
    if not scores:
        return None
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(scores) * len(summary) + 1.5), 3.4))
    width = 0.8 / max(1, len(summary))
    x = np.arange(len(scores))
    for i, (_, row) in enumerate(summary.iterrows()):
        if i >= MAX_LINES:
            break
        y = np.array([row[f"{s}_mean"] for s in scores], dtype=float)
        lo = np.array([row[f"{s}_ci_low"] for s in scores], dtype=float)
        hi = np.array([row[f"{s}_ci_high"] for s in scores], dtype=float)
        ax.bar(x + i * width, y, width, yerr=np.clip(np.vstack([y - lo, hi - y]), 0, None), capsize=4, label=labels[i])
    ax.set_xticks(x + width * (min(len(summary), MAX_LINES) - 1) / 2, [_pretty(s) for s in scores])
    ax.set_ylabel("mean (95% CI)")
    ax.set_title("Scores")
    ax.grid(alpha=0.3, axis="y")
    if len(summary) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return to_data_uri(fig)


def latency_cdf(results: pd.DataFrame, label_of: dict, key: str = "_config") -> str | None:
    """Empirical CDF of ``latency_s`` of ok rows, one line per configuration."""
    latency = results["latency_s"].to_numpy(dtype=float, na_value=np.nan)
    usable = (results["status"] == "ok").to_numpy(dtype=bool, na_value=False) & ~np.isnan(latency)
    if not usable.any():
        return None
    latency, configs = latency[usable], results[key].to_numpy()[usable]  # no copy of the frame (a million rows)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, cfg in enumerate(c for c in pd.unique(configs) if not pd.isna(c)):  # in groupby(sort=False)'s order
        if i >= MAX_LINES:
            break
        x = np.sort(latency[configs == cfg])
        y = np.arange(1, x.size + 1) / x.size
        if x.size > CDF_POINTS:  # the exact CDF at evenly spaced ranks: the same picture, a fraction of the memory
            keep = np.unique(np.linspace(0, x.size - 1, CDF_POINTS).astype(int))
            x, y = x[keep], y[keep]
        ax.step(x, y, where="post", label=label_of.get(cfg, str(cfg)))
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("fraction of requests ≤ x")
    ax.set_title("Latency CDF")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return to_data_uri(fig)


def token_histograms(results: pd.DataFrame, label_of: dict, key: str = "_config") -> str | None:
    """Histograms of prompt and completion tokens of ok rows, one outline per configuration."""
    ok = (results["status"] == "ok").to_numpy(dtype=bool, na_value=False)
    columns = [c for c in ("prompt_tokens", "completion_tokens") if c in results and results[c][ok].notna().any()]
    if not columns:
        return None
    configs = results[key].to_numpy()[ok]  # the rows of each configuration picked by mask: no copy of the frame
    order = [c for c in pd.unique(configs) if not pd.isna(c)]  # in the order groupby(sort=False) gives
    fig, axes = plt.subplots(1, len(columns), figsize=(5.0 * len(columns), 3.2), squeeze=False)
    for ax, col in zip(axes[0], columns):
        column = results[col].to_numpy(dtype=float, na_value=np.nan)[ok]
        present = ~np.isnan(column)
        values = column[present]
        bins = np.histogram_bin_edges(values, bins=min(30, max(1, np.unique(values).size)))
        if bins[0] == bins[-1]:
            bins = np.array([bins[0] - 0.5, bins[0] + 0.5])
        for i, cfg in enumerate(order):
            if i >= MAX_LINES:
                break
            ax.hist(
                column[present & (configs == cfg)],
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
    return to_data_uri(fig)


def load_curves(load: pd.DataFrame, knees: dict) -> str | None:
    """Latency, TTFT and TPOT percentiles and goodput against achieved rate, one line per
    configuration, the saturation knee (``knees``: configuration -> achieved rate) marked."""
    if "achieved_rps" not in load or load["achieved_rps"].notna().sum() < 2:
        return None
    if "config_id" in load and load.groupby("config_id")["achieved_rps"].count().max() < 2:
        return None  # no configuration was run at more than one load: nothing to draw a curve of
    panels = [
        (m, f"{m} (s)")
        for m in ("latency_s", "ttft_s", "tpot_s")
        if f"{m}_p99" in load and load[f"{m}_p99"].notna().any()
    ]
    rates = [c for c in ("throughput_rps", "goodput_rps", "quality_goodput_rps") if c in load and load[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.4), squeeze=False)
    groups = load.groupby("config_id", sort=False) if "config_id" in load else [("all", load)]
    for i, (config, part) in enumerate(groups):
        if i >= MAX_LINES:
            break
        part = part.sort_values("achieved_rps")
        x = part["achieved_rps"].to_numpy(dtype=float)
        for ax, (metric, _) in zip(axes[0], panels):
            for q, style in ((50, "--"), (99, "-")):
                ax.plot(
                    x, part[f"{metric}_p{q}"].to_numpy(dtype=float), style, marker="o", ms=3, label=f"{config} p{q}"
                )
        for column in rates:
            axes[0][-1].plot(
                x, part[column].to_numpy(dtype=float), marker="o", ms=3, label=f"{config} {column.removesuffix('_rps')}"
            )
        knee = knees.get(config)
        if knee is not None:
            for ax in axes[0]:
                ax.axvline(knee, color="red", linestyle=":", linewidth=1)
                ax.annotate(
                    f"knee {knee:.3g}/s",
                    (knee, 1),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    color="red",
                    ha="right",
                    va="top",
                    rotation=90,
                )
    for ax, (metric, ylabel) in zip(axes[0], panels):
        ax.set_title(f"{metric}: p50 (dashed), p99")
        ax.set_ylabel(ylabel)
        if metric == "latency_s":
            ax.set_yscale("log")
    axes[0][-1].set_title("throughput and goodput")
    axes[0][-1].set_ylabel("requests/s")
    for ax in axes[0]:
        ax.set_xlabel("achieved rate (requests/s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return to_data_uri(fig)


def score_tradeoff(
    summary: pd.DataFrame, score: str, x_col: str, x_label: str, front: Sequence[bool], labels: Sequence[str]
) -> str | None:
    """Mean ``score`` (95% CI as error bars) against a cost such as ``cost_usd`` or ``latency_s_p50``,
    one point per configuration, the Pareto front (``front``, e.g. ``analysis.pareto.pareto_front``) joined and ringed."""
    mean, low, high = f"{score}_mean", f"{score}_ci_low", f"{score}_ci_high"
    if mean not in summary or x_col not in summary:
        return None
    x = summary[x_col].to_numpy(dtype=float)
    y = summary[mean].to_numpy(dtype=float)
    usable = np.isfinite(x) & np.isfinite(y)
    if not usable.any():
        return None
    front = np.asarray(front, dtype=bool) & usable
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    err = np.vstack([y - summary[low].to_numpy(dtype=float), summary[high].to_numpy(dtype=float) - y])
    ax.errorbar(
        x[usable], y[usable], yerr=np.clip(err[:, usable], 0, None), fmt="o", capsize=3, color="#4c72b0", alpha=0.8
    )
    if front.any():
        order = np.argsort(x[front])
        ax.plot(x[front][order], y[front][order], "-", color="#c44e52", linewidth=1.5, label="Pareto front")
        ax.scatter(x[front], y[front], s=120, facecolors="none", edgecolors="#c44e52", linewidths=1.5)
        for xi, yi, label in zip(x[front], y[front], np.asarray(labels, dtype=object)[front]):
            ax.annotate(str(label)[:28], (xi, yi), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.legend(fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{_pretty(score)} (mean, 95% CI)")
    ax.set_title(f"{_pretty(score)} vs {x_label}")
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def score_history(points: pd.DataFrame, score: str) -> str | None:
    """A score over time, one point per run (``started_at``, ``mean``, ``ci_low``, ``ci_high``) with its
    95% CI as a band, and the run's latency p50 (``latency_s_p50``) below it."""
    points = points.dropna(subset=["started_at"]).sort_values("started_at")
    if points.empty:
        return None
    when = pd.to_datetime(points["started_at"], utc=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 4.8), sharex=True, height_ratios=[2, 1])
    y = points["mean"].to_numpy(dtype=float)
    top.fill_between(
        when,
        points["ci_low"].to_numpy(dtype=float),
        points["ci_high"].to_numpy(dtype=float),
        alpha=0.25,
        label="95% CI",
    )
    top.plot(when, y, marker="o", label=_pretty(score))
    top.set_ylabel(f"{_pretty(score)} (mean)")
    top.set_title(f"{_pretty(score)} per run")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    if "latency_s_p50" in points:
        bottom.plot(when, points["latency_s_p50"].to_numpy(dtype=float), marker="o", color="#55a868")
    bottom.set_ylabel("latency p50 (s)")
    bottom.grid(alpha=0.3)
    fig.autofmt_xdate()
    return to_data_uri(fig)
