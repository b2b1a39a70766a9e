"""The CI regression gate over a paired comparison (``sentech-eval check``).

Thresholds (command line or a YAML file; the command line wins):

- ``max_score_drop``: per score, the largest allowed absolute drop of the mean (baseline − candidate).
- ``max_latency_increase``: the largest allowed relative increase of latency p50 and of p95;
  ``latency_slack_ms`` adds an absolute allowance on top (for millisecond latencies, where
  scheduling noise alone changes them by whole multiples): fail when
  ``candidate > baseline × (1 + max_latency_increase) + slack``.
- ``max_error_rate``: the largest allowed share of candidate rows with ``status="error"``.
- ``require_significance``: a score drop beyond its threshold counts only when the paired 95% CI
  of (candidate − baseline) lies entirely below zero (``analysis.compare``'s CI: Newcombe for 0/1
  scores, cluster-adjusted when a prompt has several pairs; the clustered bootstrap otherwise).
  Each score's message names the interval and, for 0/1 scores, the McNemar-type p-value, and
  says so when the two disagree.

``evaluate`` gives one ``CheckResult`` per threshold; ``commands.check`` turns them into exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sentech_eval.analysis.pairing import PairedResults
from sentech_eval.errors import ConfigError, ResultsError

ALL_SCORES = "*"
_YAML_KEYS = {"max_score_drop", "max_latency_increase", "latency_slack_ms", "max_error_rate", "require_significance"}
_EPS = 1e-12  # float round-off allowance when comparing an observed change with its threshold


@dataclass
class Thresholds:
    """What the gate enforces; ``None`` means not checked."""

    max_score_drop: dict[str, float] = field(default_factory=dict)  # score name or "*" -> absolute drop
    max_latency_increase: float | None = None  # relative, e.g. 0.10 = +10%
    latency_slack_ms: float = 0.0  # absolute allowance added to the latency limit
    max_error_rate: float | None = None  # share of candidate rows
    require_significance: bool = False

    def is_empty(self) -> bool:
        return not self.max_score_drop and self.max_latency_increase is None and self.max_error_rate is None


@dataclass
class CheckResult:
    """The outcome of one threshold: one JUnit test case and one line of the summary."""

    name: str
    threshold: str
    baseline: float | None
    candidate: float | None
    observed: str
    passed: bool
    message: str
    unit: str = ""  # shown after the baseline and candidate values


def number(value: object, what: str, minimum: float = 0.0) -> float:
    """``value`` as a float of at least ``minimum``, or a ConfigError naming ``what``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}.") from None
    if not number >= minimum:
        raise ConfigError(f"{what} must be at least {minimum:g}, got {value!r}.")
    return number


def parse_score_drop(spec: str) -> tuple[str, float]:
    """``SCORE=0.02`` (or a bare ``0.02`` for every score) -> (score name or "*", 0.02)."""
    if "=" in spec:
        name, _, value = spec.partition("=")
        name = name.strip()
        if not name:
            raise ConfigError(f"--max-score-drop {spec!r} has no score name; write SCORE=0.02, e.g. exact_match=0.02.")
    else:
        name, value = ALL_SCORES, spec
    if name in ("all", "*"):
        name = ALL_SCORES
    return name, number(value, f"The max score drop for {name!r}")


def load_thresholds_file(path: str | Path) -> Thresholds:
    """Read thresholds from YAML (keys: max_score_drop, max_latency_increase, max_error_rate, require_significance)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"The thresholds file {str(p)!r} does not exist.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"The thresholds file {str(p)!r} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"The thresholds file {str(p)!r} must be a mapping with keys {', '.join(sorted(_YAML_KEYS))}."
        )
    unknown = sorted(set(data) - _YAML_KEYS)
    if unknown:
        raise ConfigError(
            f"The thresholds file {str(p)!r} has unknown key(s) {', '.join(map(str, unknown))}; "
            f"known keys: {', '.join(sorted(_YAML_KEYS))}."
        )
    t = Thresholds()
    drops = data.get("max_score_drop")
    if isinstance(drops, dict):
        for name, value in drops.items():
            key = ALL_SCORES if str(name) in ("all", "*") else str(name)
            t.max_score_drop[key] = number(value, f"max_score_drop.{name} in {str(p)!r}")
    elif drops is not None:
        t.max_score_drop[ALL_SCORES] = number(drops, f"max_score_drop in {str(p)!r}")
    if data.get("max_latency_increase") is not None:
        t.max_latency_increase = number(data["max_latency_increase"], f"max_latency_increase in {str(p)!r}")
    if data.get("latency_slack_ms") is not None:
        t.latency_slack_ms = number(data["latency_slack_ms"], f"latency_slack_ms in {str(p)!r}")
    if data.get("max_error_rate") is not None:
        t.max_error_rate = number(data["max_error_rate"], f"max_error_rate in {str(p)!r}")
        if t.max_error_rate > 1:
            raise ConfigError(f"max_error_rate in {str(p)!r} is a share between 0 and 1, got {t.max_error_rate}.")
    t.require_significance = bool(data.get("require_significance", False))
    return t


def resolve_scores(requested: dict[str, float], paired: PairedResults) -> dict[str, float]:
    """Map the requested names (``exact_match`` or ``score_exact_match``, or "*") to common score columns."""
    out: dict[str, float] = {}
    if ALL_SCORES in requested:
        if not paired.scores:
            raise ResultsError(
                "--max-score-drop applies to every score, but baseline and candidate share no score column."
            )
        for col in paired.scores:
            out[col] = requested[ALL_SCORES]
    for name, value in requested.items():
        if name == ALL_SCORES:
            continue
        col = name if name.startswith("score_") else f"score_{name}"
        if col not in paired.scores:
            where = ""
            if col in paired.only_in_a:
                where = " (the candidate lacks it)"
            elif col in paired.only_in_b:
                where = " (the baseline lacks it)"
            known = ", ".join(c.removeprefix("score_") for c in paired.scores) or "none"
            raise ConfigError(f"Unknown score {name!r}{where}; scores in both results: {known}.")
        out[col] = value
    return out


def _evidence(r: pd.Series) -> str:
    """`` (newcombe_clustered over 100 prompts; mcnemar_clustered p = 0.21)`` and any disagreement note."""
    parts = []
    if isinstance(r.get("ci_method"), str) and r["ci_method"]:
        prompts = f" over {int(r['n_clusters'])} prompts" if not pd.isna(r.get("n_clusters")) else ""
        parts.append(f"{r['ci_method']}{prompts}")
    if isinstance(r.get("test"), str) and r["test"] and not pd.isna(r.get("p_value")):
        parts.append(f"{r['test']} p = {float(r['p_value']):.3g}")
    text = f" ({'; '.join(parts)})" if parts else ""
    disagreement = [part for part in str(r.get("note") or "").split("; ") if "disagree" in part]
    if disagreement:
        text += f"; {disagreement[0]}"
    return text


def evaluate(paired: PairedResults, metrics: pd.DataFrame, thresholds: Thresholds) -> list[CheckResult]:
    """Apply every threshold to the comparison metrics; one CheckResult per threshold."""
    results: list[CheckResult] = []
    by_metric = {(r["metric"], r["column"]): r for _, r in metrics.iterrows()}
    for col, max_drop in resolve_scores(thresholds.max_score_drop, paired).items():
        r = by_metric[("score", col)]
        name = f"score_drop[{col.removeprefix('score_')}]"
        if pd.isna(r["diff"]):
            # Errored rows carry no score: no scored pair at all is a regression, not unusable input.
            results.append(
                CheckResult(
                    name,
                    f"drop ≤ {max_drop:g}",
                    None,
                    None,
                    "n/a",
                    False,
                    f"no pair has {col} on both sides (every paired row errored on one side?)",
                )
            )
            continue
        drop = -float(r["diff"])
        beyond = drop > max_drop + _EPS
        significant = float(r["ci_high"]) < 0
        failed = beyond and (significant or not thresholds.require_significance)
        ci = f"CI [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]" + _evidence(r)
        if failed:
            msg = f"{col} dropped by {drop:.4f} (> {max_drop:g}), {ci}"
        elif beyond:
            msg = f"{col} dropped by {drop:.4f} (> {max_drop:g}) but the paired {ci} includes 0: not significant"
        else:
            msg = f"{col} changed by {float(r['diff']):+.4f} (allowed drop {max_drop:g}), {ci}"
        results.append(
            CheckResult(
                name,
                f"drop ≤ {max_drop:g}" + (" (significant only)" if thresholds.require_significance else ""),
                float(r["value_a"]),
                float(r["value_b"]),
                f"{float(r['diff']):+.4f}",
                not failed,
                msg,
            )
        )
    if thresholds.max_latency_increase is not None:
        limit = thresholds.max_latency_increase
        slack_s = thresholds.latency_slack_ms / 1000.0
        slack = f" + {thresholds.latency_slack_ms:g} ms" if slack_s else ""
        for q in ("p50", "p95"):
            r = by_metric.get((f"latency_{q}", "latency_s"))
            if r is None:
                raise ResultsError(
                    "--max-latency-increase needs latency_s on both sides for pairs where both succeeded; none found."
                )
            if r["value_a"] is None or r["value_a"] != r["value_a"]:  # a row without values says why (e.g. the cache)
                raise ResultsError(
                    f"--max-latency-increase needs latency measured on both sides; {r['note']} "
                    "(re-run with runner.cache=off or refresh to measure it)."
                )
            a, b = float(r["value_a"]), float(r["value_b"])
            ratio = b / a if a > 0 else (1.0 if b <= 0 else float("inf"))
            allowed = a * (1 + limit) + slack_s
            failed = b > allowed + _EPS
            msg = (
                f"latency {q} {a * 1000:.1f} ms → {b * 1000:.1f} ms (×{ratio:.2f}; allowed up to "
                f"{allowed * 1000:.1f} ms = ×{1 + limit:.2f}{slack})"
            )
            results.append(
                CheckResult(
                    f"latency_{q}_increase",
                    f"increase ≤ {limit:.0%}{slack}",
                    a * 1000,
                    b * 1000,
                    f"{ratio - 1:+.1%}",
                    not failed,
                    msg,
                    unit=" ms",
                )
            )
    if thresholds.max_error_rate is not None:
        r = by_metric[("error_rate", "status")]
        rate = float(r["value_b"])
        failed = rate > thresholds.max_error_rate + _EPS
        msg = (
            f"{rate:.2%} of {int(r['n_b'])} candidate rows failed (allowed {thresholds.max_error_rate:.2%}; "
            f"baseline {float(r['value_a']):.2%})"
        )
        results.append(
            CheckResult(
                "error_rate",
                f"≤ {thresholds.max_error_rate:.2%}",
                float(r["value_a"]),
                rate,
                f"{rate:.2%}",
                not failed,
                msg,
            )
        )
    return results
