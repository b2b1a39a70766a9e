"""What a tracker gets from a finished run or sweep dir, read back from its Parquet files.

``find_sources(path)`` names the run dirs and sweep dirs at PATH (one, or a directory of them);
``replay(source)`` turns one of them into ``TrackedRun`` records that a tracker writer
(``export.mlflow``, ``export.wandb``) only has to send:

- a run dir becomes one run; a sweep dir becomes a parent run with one child per configuration;
- params come from the results' metadata (backend, model, dataset, sampling, the runner settings that
  matter, git commit, package versions), passed through the project's redaction rules once more;
- metrics are the numbers of ``analysis.summary`` (the summary.parquet that ``report`` wrote when it is
  newer than the results, else ``summarize`` on the same rows, with report's defaults and the run's
  ``report.pass_at``), pass@k included when present, and, for a load run, the rows of its load.parquet
  as one step per load level;
- files: summary.parquet, report.html (built by ``render`` when the dir has none), the rows
  (results.parquet, or a seeded sample of N rows), and a sweep's trials.parquet and sweep.json.

Every run has a ``key`` made of the run's own identity: the run_id of its earliest row (a resumed run
keeps it) and the config_id, so a second export finds and updates the runs of the first one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from sentech_eval.analysis.summary import CONFIG_COLUMNS, SAMPLING_COLUMNS, config_keys, load, summarize
from sentech_eval.config import parse_pass_at
from sentech_eval.engine.results import METADATA_KEY, PARTS_DIR, RESULTS_FILE, is_quality_score, read_metadata
from sentech_eval.engine.sweep import SWEEP_JSON, TRIALS_FILE
from sentech_eval.errors import ConfigError, ResultsError
from sentech_eval.render.report_html import build_html
from sentech_eval.secrets import REDACTED, environment_secrets, redact_tree

SUMMARY_FILE = "summary.parquet"
REPORT_FILE = "report.html"
LOAD_FILE = "load.parquet"
CHECK_FILE = "check.json"
SAMPLE_FILE = "results.sample.parquet"
# the runner settings that change what a run measured
RUNNER_PARAMS = ("repeats", "concurrency", "arrival", "rate", "burstiness", "rpm", "tpm", "max_retries", "cache")
# the columns a tracker's table view shows (those present, then the quality scores)
TABLE_COLUMNS = (
    "prompt_id",
    "repeat",
    "prompt",
    "reference",
    "output",
    "status",
    "error",
    "latency_s",
    "completion_tokens",
)
MAX_PARAM_CHARS = 500
HEX_IDS = ("git_commit", "run_id", "config_id")
HEX = re.compile(r"[0-9a-f]{6,64}")


@dataclass
class TrackedRun:
    """One tracker run: who it is, what it is called, and what it carries."""

    key: str  # the run's own identity; trackers find an earlier export by it
    name: str
    kind: str  # "run", "sweep" or "configuration"
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    steps: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value per step (load levels)
    tags: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # artifact name -> file on disk
    table: pd.DataFrame | None = None  # rows for a tracker's table view
    start_ms: int | None = None
    end_ms: int | None = None


@dataclass
class Replay:
    """What one run dir or sweep dir exports: a parent (sweeps only) and one run per configuration."""

    source: Path
    kind: str  # "run" or "sweep"
    parent: TrackedRun | None
    children: list[TrackedRun]
    experiment: str | None = None  # the run config's ``experiment`` (results/<experiment>/…), if recorded

    @property
    def runs(self) -> list[TrackedRun]:
        """Every tracker run, the parent first."""
        return ([self.parent] if self.parent else []) + self.children


# ---------------------------------------------------------------------------------------- finding
def _has_results(path: Path) -> bool:
    return (path / RESULTS_FILE).is_file() or (path / PARTS_DIR).is_dir()


def find_sources(path: str | Path) -> list[tuple[Path, str]]:
    """(dir, "run" or "sweep") for PATH itself, or for every run and sweep dir under it.

    A run dir inside a sweep dir (a job) belongs to its sweep. ResultsError when there is nothing.
    """
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path} does not exist; pass a run dir, a sweep dir or a directory of them.")
    if path.is_file():
        if path.name != RESULTS_FILE:
            raise ResultsError(f"{path} is not a run dir; pass a run dir, a sweep dir or a directory of them.")
        path = path.parent
    if (path / SWEEP_JSON).is_file():
        return [(path, "sweep")]
    if _has_results(path):
        return [(path, "run")]
    sweeps = sorted({p.parent for p in path.rglob(SWEEP_JSON) if PARTS_DIR not in p.parts})
    runs = sorted(
        {p.parent for p in path.rglob(RESULTS_FILE) if PARTS_DIR not in p.parts}
        | {p.parent for p in path.rglob(PARTS_DIR) if p.is_dir()}
    )
    runs = [r for r in runs if not any(s == r or s in r.parents for s in sweeps)]
    runs = [r for r in runs if not any(o in r.parents for o in runs)]
    if not sweeps and not runs:
        raise ResultsError(
            f"No results under {path} (no {RESULTS_FILE}, no {SWEEP_JSON}); point at a run dir, a sweep dir "
            "or a directory of them, as `sentech-eval run` writes them."
        )
    return [(s, "sweep") for s in sweeps] + [(r, "run") for r in runs]


# ---------------------------------------------------------------------------------------- values
def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _plain(value: Any) -> Any:
    """numpy scalars as Python values."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _text(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True, default=str)
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"


def _is_fresh(derived: Path, source: Path) -> bool:
    """Whether ``derived`` (summary.parquet, report.html) was written from ``source``'s current rows."""
    results = source / RESULTS_FILE
    return derived.is_file() and results.is_file() and derived.stat().st_mtime >= results.stat().st_mtime


def _ms(value: Any) -> int | None:
    if _missing(value):
        return None
    return int(pd.Timestamp(value).timestamp() * 1000)


def safe_strings(values: dict[str, Any]) -> dict[str, str]:
    """``values`` as strings with every credential (by name, by shape, or a credential variable's value) blanked.

    The ids this project makes (``git_commit``, ``run_id``, ``config_id``: hex digests, which have a key's
    shape) are kept when they are hex and hold no credential variable's value.
    """
    secrets = environment_secrets()
    texts = {k: _text(v) for k, v in values.items() if not _missing(v) and _text(v) != ""}
    cleaned = redact_tree(texts, secrets)
    for name in HEX_IDS:
        value = texts.get(name)
        if value is not None and HEX.fullmatch(value) and not any(s in value for s in secrets):
            cleaned[name] = value
    return {str(k): (v if isinstance(v, str) else REDACTED) for k, v in cleaned.items()}


def clean_reason(exc: BaseException) -> str:
    """A tracker's error message on one line, without ``user:password@`` in URLs or a credential variable's value."""
    reason = re.sub(r"://[^/\s@]+@", "://", " ".join(str(exc).split())) or type(exc).__name__
    for secret in environment_secrets():
        reason = reason.replace(secret, REDACTED)
    return reason


def tracker_id(key: str, length: int = 24) -> str:
    """A short id made of letters and digits only, the same for the same key (W&B run ids)."""
    return hashlib.sha256(key.encode()).hexdigest()[:length]


# ---------------------------------------------------------------------------------------- pieces
def origin_run_id(rows: pd.DataFrame) -> str:
    """The run_id of the earliest row: the invocation that made these results (a resume keeps it)."""
    if "run_id" not in rows or rows["run_id"].isna().all():
        return "no-run-id"
    ordered = rows.dropna(subset=["run_id"])
    if "started_at" in ordered and ordered["started_at"].notna().any():
        ordered = ordered.sort_values(["started_at", "run_id"], kind="stable", na_position="last")
    else:
        ordered = ordered.sort_values("run_id", kind="stable")
    return str(ordered["run_id"].iloc[0])


def summary_metrics(row: dict[str, Any]) -> dict[str, float]:
    """Every finite number of one summary row but the configuration's own values (those are params)."""
    metrics = {}
    for name, value in row.items():
        value = _plain(value)
        if name in CONFIG_COLUMNS or name == "config_id" or isinstance(value, str) or _missing(value):
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics[name] = float(value)
    return metrics


def summary_tags(row: dict[str, Any]) -> dict[str, str]:
    """The summary's words (each score's interval method) and the share of rows answered from the cache."""
    tags = {
        name: str(value)
        for name, value in row.items()
        if (name.endswith("_ci_method") or name == "pass_at_score") and isinstance(value, str)
    }
    n, cached = row.get("n"), row.get("n_cached")
    if not _missing(n) and n and not _missing(cached):
        tags["cached_share"] = f"{float(cached) / float(n):.3f}"
    return tags


def config_params(row: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Backend, model, dataset, sampling, runner settings, scorers, git commit and versions of one configuration."""
    config = meta.get("config") or {}
    params: dict[str, Any] = {"config_id": row.get("config_id")}
    for name in CONFIG_COLUMNS:
        params[name] = row.get(name)
    runner = config.get("runner") or {}
    for name in RUNNER_PARAMS:
        params[f"runner.{name}"] = runner.get(name)
    backend = meta.get("backend") or {}
    params["backend.stream"] = backend.get("stream")
    scorers = config.get("scorers") or {}
    params["scorers"] = ",".join(sorted(scorers)) if isinstance(scorers, dict) else scorers
    params["dataset.rows"] = (meta.get("dataset") or {}).get("rows")
    params["git_commit"] = meta.get("git_commit")
    for name, value in sorted((meta.get("versions") or {}).items()):
        params[f"version.{name}"] = value
    return params


def run_name(row: dict[str, Any], swept: list[str]) -> str:
    """``capitals remote sentech-small temperature=0.7``: dataset, backend, model, then the swept settings."""
    parts = [_text(row[c]) for c in ("dataset", "backend", "model") if not _missing(row.get(c))]
    parts += [f"{c}={_text(row[c])}" for c in swept if c in SAMPLING_COLUMNS and not _missing(row.get(c))]
    return " ".join(parts) or "sentech-eval run"


def sweep_name(summary: pd.DataFrame, swept: list[str]) -> str:
    """``sweep capitals remote sentech-small: temperature×5``."""
    parts = []
    for col in ("dataset", "backend", "model"):
        if col in summary:
            values = [_text(v) for v in dict.fromkeys(summary[col].dropna())]
            if values:
                parts.append(",".join(values))
    axes = ", ".join(f"{c}×{summary[c].nunique(dropna=False)}" for c in swept)
    return "sweep " + " ".join(parts) + (f": {axes}" if axes else "")


def swept_columns(summary: pd.DataFrame) -> list[str]:
    """Configuration columns with more than one value across the summary (``analysis.summary``'s rule)."""
    return [c for c in CONFIG_COLUMNS if c in summary and summary[c].nunique(dropna=False) > 1]


def table_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The columns a person reads in a tracker's table: prompt, reference, output, status, scores."""
    columns = [c for c in TABLE_COLUMNS if c in rows] + [c for c in rows.columns if is_quality_score(c)]
    table = rows[columns].reset_index(drop=True)
    return table.astype(object).where(table.notna(), None)


def sample_rows(rows: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """All rows, or a seeded sample of ``limit`` of them in their original order."""
    if limit is None or len(rows) <= limit:
        return rows
    return rows.sample(n=limit, random_state=0).sort_index()


def config_masks(df: pd.DataFrame, summary: pd.DataFrame) -> list[pd.Series]:
    """For each summary row, the mask of its rows in ``df`` (grouped by ``analysis.summary.config_keys``)."""
    keys = [k for k in config_keys(df) if k in summary]
    masks = []
    for _, row in summary.iterrows():
        mask = pd.Series(True, index=df.index)
        for key in keys:
            mask &= df[key].isna() if _missing(row[key]) else df[key] == row[key]
        masks.append(mask)
    return masks


def time_span(rows: pd.DataFrame) -> tuple[int | None, int | None]:
    """(first request's start, last answer's end) in epoch milliseconds."""
    if "started_at" not in rows or rows["started_at"].isna().all():
        return None, None
    start = pd.to_datetime(rows["started_at"], utc=True)
    latency = pd.to_timedelta(rows["latency_s"].fillna(0.0), unit="s") if "latency_s" in rows else pd.Timedelta(0)
    return _ms(start.min()), _ms((start + latency).max())


def check_verdict(source: Path) -> dict[str, str]:
    """The tags of a ``sentech-eval check`` that gated this run (check.json beside the results), if any."""
    record = _read_json(source / CHECK_FILE)
    if not record or "passed" not in record:
        return {}
    return {"check": "pass" if record["passed"] else "fail"}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def run_pass_at(metas: list[dict[str, Any]]) -> list[int] | None:
    """The ``report.pass_at`` the run was started with (the first metadata that sets it), as ``report`` reads it."""
    for meta in metas:
        section = (meta.get("config") or {}).get("report")
        try:
            parsed = parse_pass_at(section.get("pass_at")) if isinstance(section, dict) else None
        except ConfigError:
            parsed = None
        if parsed:
            return parsed
    return None


def load_steps(source: Path, row: dict[str, Any]) -> dict[str, list[float]]:
    """A load run's metrics per load level (load.parquet that ``report`` wrote), in order of achieved rate."""
    path = source / LOAD_FILE
    if not _is_fresh(path, source):
        return {}
    table = pd.read_parquet(path)
    if "config_id" in table and not _missing(row.get("config_id")):
        table = table[table["config_id"] == row["config_id"]]
    steps: dict[str, list[float]] = {}
    for col in table.columns:
        if col in CONFIG_COLUMNS or col == "config_id" or not pd.api.types.is_numeric_dtype(table[col]):
            continue
        values = [float(v) for v in table[col].astype(float)]
        if any(math.isfinite(v) for v in values):
            steps[f"load.{col}"] = values
    return steps


# ---------------------------------------------------------------------------------------- replay
@contextmanager
def replay(source: Path, kind: str, rows_limit: int | None = None) -> Iterator[Replay]:
    """The tracker runs of one run dir or sweep dir; files made for the export live until the block ends."""
    with tempfile.TemporaryDirectory(prefix="sentech-eval-export-") as tmp:
        yield build_replay(Path(source), kind, Path(tmp), rows_limit)


def build_replay(source: Path, kind: str, staging: Path, rows_limit: int | None = None) -> Replay:
    """``replay`` with the staging dir given (files that are not in the source dir are written there)."""
    if kind == "sweep" and not (source / RESULTS_FILE).is_file():
        raise ResultsError(
            f"Sweep dir {source} has no combined {RESULTS_FILE}; run `sentech-eval combine {source}` first."
        )
    df = load(source)
    job_meta = _job_metadata(source) if kind == "sweep" else {}
    source_meta = _metadata(source)
    summary_path = source / SUMMARY_FILE
    if _is_fresh(summary_path, source):
        summary = pd.read_parquet(summary_path)
    else:
        summary = summarize(df, pass_at=run_pass_at([source_meta, *job_meta.values()]))
        summary_path = staging / SUMMARY_FILE
        summary.to_parquet(summary_path, index=False)
    report_path = source / REPORT_FILE
    if not _is_fresh(report_path, source):
        report_path = staging / REPORT_FILE
        report_path.write_text(build_html(df, summary, str(source)), encoding="utf-8")
    swept = swept_columns(summary)
    masks = config_masks(df, summary)
    records = summary.to_dict("records")
    verdict = check_verdict(source)
    sweep_key = f"sweep-{origin_run_id(df)}"

    children = []
    for index, (row, mask) in enumerate(zip(records, masks)):
        rows = df[mask]
        meta = source_meta
        if "job" in rows and rows["job"].notna().any():
            meta = job_meta.get(int(rows["job"].dropna().iloc[0]), source_meta)
        origin = origin_run_id(rows)
        key = f"{origin}-{row.get('config_id') or index}"
        if not _missing(row.get("dataset")):
            key += f"-{tracker_id(str(row['dataset']), 8)}"
        start, end = time_span(rows)
        child = TrackedRun(
            key=f"{sweep_key}/{key}" if kind == "sweep" else key,
            name=run_name(row, swept),
            kind="configuration" if kind == "sweep" else "run",
            params=safe_strings({"run_id": origin, **config_params(row, meta)}),
            metrics=summary_metrics(row),
            steps=load_steps(source, row),
            tags=safe_strings({**summary_tags(row), **verdict}),
            start_ms=start,
            end_ms=end,
        )
        shown = sample_rows(rows, rows_limit)
        child.table = table_rows(shown)
        if kind == "run" and len(records) == 1:
            child.files = {SUMMARY_FILE: summary_path, REPORT_FILE: report_path}
            child.files.update(_rows_file(shown, meta, staging / key, len(shown) < len(rows)))
            if _is_fresh(source / LOAD_FILE, source):
                child.files[LOAD_FILE] = source / LOAD_FILE
        else:
            own = staging / key
            own.mkdir(parents=True, exist_ok=True)
            pd.DataFrame([row]).to_parquet(own / SUMMARY_FILE, index=False)
            child.files = {SUMMARY_FILE: own / SUMMARY_FILE}
            child.files.update(_rows_file(shown, meta, own, len(shown) < len(rows)))
        children.append(child)

    experiment = (source_meta.get("config") or {}).get("experiment")
    for meta in job_meta.values():
        experiment = experiment or (meta.get("config") or {}).get("experiment")
    experiment = str(experiment) if experiment else None
    if kind == "run" and len(children) == 1:
        return Replay(source, kind, None, children, experiment)
    parent = _parent(source, kind, df, summary, swept, children, staging)
    parent.key = sweep_key if kind == "sweep" else f"runs-{origin_run_id(df)}"
    parent.files.update({SUMMARY_FILE: summary_path, REPORT_FILE: report_path})
    parent.tags.update(safe_strings(verdict))
    return Replay(source, kind, parent, children, experiment)


def _rows_file(rows: pd.DataFrame, meta: dict[str, Any], where: Path, sampled: bool) -> dict[str, Path]:
    """The rows as a Parquet file in ``where``, with the results' metadata passed through the redaction rules
    (the rows are the run's own; the file is written anew so nothing but them and the clean metadata goes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = SAMPLE_FILE if sampled else RESULTS_FILE
    where.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    clean = json.dumps(redact_tree(meta, environment_secrets()), default=str).encode()
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: clean}), where / name)
    return {name: where / name}


def _parent(
    source: Path,
    kind: str,
    df: pd.DataFrame,
    summary: pd.DataFrame,
    swept: list[str],
    children: list[TrackedRun],
    staging: Path,
) -> TrackedRun:
    """The sweep's own run: the settings every configuration shares, what was swept, and the sweep's files."""
    shared = {
        name: value
        for name, value in children[0].params.items()
        if name != "run_id" and all(c.params.get(name) == value for c in children)
    }
    record = _read_json(source / SWEEP_JSON) or {}
    params = {**shared, "swept": ",".join(swept) or "none", "configurations": str(len(children))}
    for name in ("sweeper", "launcher", "status"):
        if record.get(name):
            params[f"sweep.{name}"] = record[name]
    metrics = {"configurations": float(len(children)), "rows": float(len(df))}
    if isinstance(record.get("jobs_total"), int):
        metrics["jobs"] = float(record["jobs_total"])
    for status, count in (record.get("job_counts") or {}).items():
        metrics[f"jobs_{status}"] = float(count)
    start, end = time_span(df)
    parent = TrackedRun(
        key="",
        name=sweep_name(summary, swept),
        kind="sweep" if kind == "sweep" else "runs",
        params=safe_strings(params),
        metrics=metrics,
        start_ms=start,
        end_ms=end,
    )
    if record:
        clean = staging / SWEEP_JSON
        clean.write_text(json.dumps(redact_tree(record, environment_secrets()), indent=2, default=str))
        parent.files[SWEEP_JSON] = clean
    if (source / TRIALS_FILE).is_file():
        parent.files[TRIALS_FILE] = source / TRIALS_FILE
    return parent


def _metadata(source: Path) -> dict[str, Any]:
    """The ``sentech_eval`` metadata of the dir's results (its merged file, else its newest part)."""
    files = [source / RESULTS_FILE] if (source / RESULTS_FILE).is_file() else []
    files += sorted((source / PARTS_DIR).glob("part-*.parquet"), reverse=True)
    for path in files:
        try:
            meta = read_metadata(path)
        except (OSError, ValueError):
            continue
        if meta:
            return meta
    return {}


def _job_metadata(sweep_dir: Path) -> dict[int, dict[str, Any]]:
    """Each job's metadata by job number (sweep.json says which dir holds which job)."""
    record = _read_json(sweep_dir / SWEEP_JSON) or {}
    out = {}
    for job in record.get("jobs") or []:
        try:
            out[int(job["job"])] = _metadata(sweep_dir / str(job["dir"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def exported_at() -> str:
    """Now, as the ISO time a tracker run records for its latest export."""
    return datetime.now(UTC).isoformat(timespec="seconds")
