"""One table per sweep: combine a Hydra multirun's job results into its sweep dir.

A sweep dir (``hydra.sweep.dir``) holds one job dir per job (``0/``, ``1/`` …), each with its own
``results.parquet``, ``job_status.json`` and ``.hydra/``. ``combine(sweep_dir)`` writes, next to them:

- ``results.parquet``: every job's rows, one table, plus the columns ``job`` (job number) and
  ``overrides`` (the job's Hydra overrides, space-separated). Jobs whose columns differ (other
  scorers, other datasets) are unified; a column a job lacks is null.
- ``trials.parquet``: one row per job: status, row counts, the objective, score means and one
  column per override key (``sampling.temperature`` …) with its value.
- ``sweep.json``: per job its overrides, status and error, plus Optuna's best parameters when
  ``optimization_results.yaml`` exists.

``CombineSweepResults`` is the Hydra callback (``hydra.callbacks`` in conf/config.yaml) that calls
``combine`` when the multirun ends. Hydra skips ``on_multirun_end`` when a job raised or the sweep
was interrupted, so the callback also registers an ``atexit`` fallback at ``on_multirun_start``:
whatever ended the process short of a kill, the finished jobs' rows are combined (``sweep.json``
then says ``"status": "incomplete"``). After a ``kill -9``, run ``sentech-eval combine DIR`` (commands/combine.py).
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - see _combine_at_exit
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sentech_eval.engine.race_sweep import race_line
from sentech_eval.engine.results import CORE_FIELDS, METADATA_KEY, PARTS_DIR, RESULTS_FILE
from sentech_eval.engine.rundir import holding_run_dir
from sentech_eval.errors import ResultsError
from sentech_eval.escaping import terminal_text

SWEEP_JSON = "sweep.json"
TRIALS_FILE = "trials.parquet"
JOB_STATUS_FILE = "job_status.json"
OPTUNA_RESULTS_FILE = "optimization_results.yaml"
MULTIRUN_FILE = "multirun.yaml"  # the sweep's config as Hydra composed it (hydra.overrides: as typed)
SWEEP_FIELDS = (pa.field("job", pa.int32()), pa.field("overrides", pa.string()))
BATCH_ROWS = 65536


# ---------------------------------------------------------------------------------------- jobs
def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job dirs under ``sweep_dir``: those with a ``.hydra/`` dir, a job_status.json or results."""
    found: set[Path] = set()
    for marker in (".hydra", JOB_STATUS_FILE, RESULTS_FILE, PARTS_DIR):
        for path in sweep_dir.rglob(marker):
            parent = path.parent
            if parent != sweep_dir and PARTS_DIR not in parent.parts and ".hydra" not in parent.parts:
                found.add(parent)
    # A dir nested inside another job dir is not a job of its own.
    return sorted(d for d in found if not any(a in found for a in d.parents))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _job_number(job_dir: Path, fallback: int) -> int:
    hydra_cfg = _read_yaml(job_dir / ".hydra" / "hydra.yaml")
    try:
        return int(hydra_cfg["hydra"]["job"]["num"])
    except (TypeError, KeyError, ValueError):
        pass
    try:
        return int(job_dir.name)
    except ValueError:
        return fallback


def _result_files(job_dir: Path) -> list[Path]:
    files = [job_dir / RESULTS_FILE] if (job_dir / RESULTS_FILE).exists() else []
    files.extend(sorted((job_dir / PARTS_DIR).glob("part-*.parquet")))
    return files


def describe_job(job_dir: Path, sweep_dir: Path, fallback_num: int) -> dict[str, Any]:
    """What one job dir says about its job: number, overrides, status, error, summary, files."""
    status_record = _read_json(job_dir / JOB_STATUS_FILE) or {}
    overrides = status_record.get("overrides")
    if overrides is None:
        overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml") or []
    files = _result_files(job_dir)
    status = status_record.get("status")
    if status is None:
        # No record: the job was killed, or is still running.
        status = "incomplete" if files else "missing"
    return {
        "job": _job_number(job_dir, fallback_num),
        "dir": str(job_dir.relative_to(sweep_dir)),
        "status": status,
        "error": status_record.get("error"),
        "overrides": [str(o) for o in overrides],
        "summary": status_record.get("summary") or {},
        "files": files,
        "node": status_record.get("node"),
    }


# ---------------------------------------------------------------------------------------- tables
def _readable_schema(path: Path) -> pa.Schema | None:
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError):
        return None


def _unified_schema(schemas: list[pa.Schema], paths: list[Path]) -> pa.Schema:
    """The jobs' schemas as one. A column whose type differs between jobs (a dataset column of another type
    in one job) becomes text; a core column that differs is a ResultsError naming it and two of the files."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    seen: dict[str, tuple[pa.DataType, Path]] = {}
    as_text: set[str] = set()
    for schema, path in zip(schemas, paths, strict=True):
        for field in schema:
            earlier = seen.setdefault(field.name, (field.type, path))
            if earlier[0] != field.type and not pa.types.is_null(earlier[0]) and not pa.types.is_null(field.type):
                if field.name in {f.name for f in CORE_FIELDS}:
                    raise ResultsError(
                        f"Column {field.name!r} is {earlier[0]} in {earlier[1]} but {field.type} in {path}; these jobs "
                        "were written by different versions and cannot be combined into one table."
                    )
                as_text.add(field.name)
    texted = [
        pa.schema([f.with_type(pa.large_string()) if f.name in as_text else f for f in schema]) for schema in schemas
    ]
    return pa.unify_schemas(texted, promote_options="permissive")


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index >= 0:
            column = batch.column(index)
            if column.type != field.type and pa.types.is_large_string(field.type):
                try:
                    columns.append(column.cast(field.type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # (a list or struct column read as text)
                    columns.append(pa.array([None if v is None else str(v) for v in column.to_pylist()], field.type))
                continue
            columns.append(column.cast(field.type))
        else:
            columns.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _write_combined(jobs: list[dict[str, Any]], target: Path, metadata: dict[str, Any]) -> int:
    """Stream every job's rows into ``target`` (atomic rename); returns the row count."""
    sources: list[tuple[dict[str, Any], Path, pa.Schema]] = []
    for job in jobs:
        for path in job["files"]:
            schema = _readable_schema(path)
            if schema is None:
                job["unreadable"] = job.get("unreadable", []) + [path.name]
                continue
            sources.append((job, path, schema.remove_metadata()))
    if sources:
        unified = _unified_schema([s for _, _, s in sources], [p for _, p, _ in sources])
    else:
        unified = pa.schema(list(CORE_FIELDS))
    for field in SWEEP_FIELDS:
        if field.name in unified.names:
            unified = unified.remove(unified.get_field_index(field.name))
        unified = unified.append(field)
    unified = unified.with_metadata({METADATA_KEY: json.dumps(metadata, default=str).encode()})
    data_schema = unified.remove_metadata()

    tmp = target.with_name(target.name + ".tmp")
    rows = 0
    with pq.ParquetWriter(tmp, unified) as writer:
        for job, path, _ in sources:
            job_rows = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
                n = batch.num_rows
                batch = batch.drop_columns([f.name for f in SWEEP_FIELDS if f.name in batch.schema.names])
                batch = batch.append_column("job", pa.array([job["job"]] * n, pa.int32()))
                batch = batch.append_column("overrides", pa.array([" ".join(job["overrides"])] * n, pa.string()))
                writer.write_batch(_conform(batch, data_schema))
                job_rows += n
            job["rows"] = job.get("rows", 0) + job_rows
            rows += job_rows
        if not sources:
            writer.write_table(pa.Table.from_batches([], schema=data_schema))
    kept = _rows_in(target) if rows == 0 else 0
    if kept:
        tmp.unlink(missing_ok=True)
        raise ResultsError(
            f"Found no job rows to combine in {target.parent}, and its {target.name} holds {kept} rows: it is "
            "kept as it is (an empty table never replaces rows); point combine at a multirun's hydra.sweep.dir."
        )
    os.replace(tmp, target)
    return rows


def _rows_in(path: Path) -> int:
    """Rows of an existing Parquet file (0 if absent; unreadable counts as holding rows: never replaced by nothing)."""
    if not path.exists():
        return 0
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError):
        return 1


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` → (key, typed value), with Hydra's own override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_overrides([text])[0]
        value = override.value()
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            value = override.get_value_element_as_str()
        return override.get_key_element().lstrip("+~"), value
    except Exception:  # noqa: BLE001 - an odd override is still shown, as text
        key, _, value = text.partition("=")
        return key.lstrip("+~"), value


def _trials_table(jobs: list[dict[str, Any]]) -> pa.Table:
    """One row per job: status, counts, objective, score means, and the override values."""
    records: list[dict[str, Any]] = []
    param_keys: list[str] = []
    score_keys: list[str] = []
    for job in jobs:
        summary = job["summary"]
        record: dict[str, Any] = {
            "job": job["job"],
            "dir": job["dir"],
            "status": job["status"],
            "error": job["error"],
            "overrides": " ".join(job["overrides"]),
            "rows": job.get("rows", 0),
            "ok": summary.get("ok"),
            "errors": summary.get("errors"),
            "elapsed_s": summary.get("elapsed_s"),
            "objective": summary.get("objective"),
        }
        for name, value in (summary.get("scores") or {}).items():
            record[name] = value
            if name not in score_keys:
                score_keys.append(name)
        for text in job["overrides"]:
            key, value = parse_override(text)
            record[f"param:{key}"] = value
            if key not in param_keys:
                param_keys.append(key)
        records.append(record)

    columns: dict[str, pa.Array] = {}
    fixed = {
        "job": pa.int32(),
        "dir": pa.string(),
        "status": pa.string(),
        "error": pa.string(),
        "overrides": pa.string(),
        "rows": pa.int64(),
        "ok": pa.int64(),
        "errors": pa.int64(),
        "elapsed_s": pa.float64(),
        "objective": pa.float64(),
    }
    for name, dtype in fixed.items():
        columns[name] = pa.array([r.get(name) for r in records], dtype)
    for name in score_keys:
        columns[name] = pa.array([_float_or_none(r.get(name)) for r in records], pa.float64())
    for key in param_keys:
        values = [r.get(f"param:{key}") for r in records]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, bool) for v in present):
            array = pa.array(values, pa.bool_())
        elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            array = pa.array(values, pa.int64())
        elif present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            array = pa.array([None if v is None else float(v) for v in values], pa.float64())
        else:
            array = pa.array([None if v is None else str(v) for v in values], pa.string())
        # an override named like a fixed column (objective=score_x) must not replace its value
        columns[key if key not in columns else f"override.{key}"] = array
    return pa.table(columns)


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------- combine
def combine(sweep_dir: str | Path, status: str | None = None) -> dict[str, Any]:
    """Combine a sweep dir's job results into ``results.parquet``, ``trials.parquet`` and ``sweep.json``.

    Failed or unfinished jobs are recorded, never fatal; jobs killed mid-run contribute the rows
    they flushed. ``status`` (``"complete"``/``"incomplete"``) goes into sweep.json; by default it
    is "complete" when every job has a status record. Returns the sweep.json content.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ResultsError(f"Sweep dir {sweep_dir} does not exist; pass the hydra.sweep.dir of a multirun.")
    refuse_non_sweep_dir(sweep_dir)
    with holding_run_dir(sweep_dir, "combine"):
        return _combine(sweep_dir, status)


def refuse_non_sweep_dir(path: Path) -> None:
    """A plain run dir (its own ``.hydra/`` or job_status.json, no ``multirun.yaml``) is not a sweep: combining it
    would replace its results with its (absent) jobs' rows."""
    if (path / "multirun.yaml").is_file() or (path / SWEEP_JSON).is_file():
        return
    if (path / ".hydra").is_dir() or (path / JOB_STATUS_FILE).is_file():
        raise ResultsError(
            f"{path} is a run dir, not a sweep dir (it has a .hydra/ of its own and no multirun.yaml); `combine` "
            "joins the jobs of a multirun's hydra.sweep.dir — nothing was changed. A run dir's results.parquet is "
            "already complete; `sentech-eval report` reads it as is."
        )


def _combine(sweep_dir: Path, status: str | None) -> dict[str, Any]:
    jobs = [describe_job(d, sweep_dir, i) for i, d in enumerate(find_job_dirs(sweep_dir))]
    jobs.sort(key=lambda j: (j["job"], j["dir"]))
    if status is None:
        status = "complete" if all(j["status"] not in ("incomplete", "missing") for j in jobs) else "incomplete"
    combined_at = datetime.now(UTC).isoformat()

    def job_records() -> list[dict[str, Any]]:
        return [
            {
                "job": j["job"],
                "dir": j["dir"],
                "status": j["status"],
                "error": j["error"],
                "overrides": j["overrides"],
                "rows": j.get("rows", 0),
                "objective": j["summary"].get("objective"),
                "scores": j["summary"].get("scores") or {},
                **({"unreadable": j["unreadable"]} if j.get("unreadable") else {}),
                **({"node": j["node"]} if j.get("node") else {}),
            }
            for j in jobs
        ]

    metadata = {
        "sweep": {
            "dir": str(sweep_dir.resolve()),
            "combined_at": combined_at,
            "status": status,
            "jobs": [
                {"job": j["job"], "dir": j["dir"], "status": j["status"], "overrides": j["overrides"]} for j in jobs
            ],
        }
    }
    first_meta = _first_job_metadata(jobs)
    if first_meta:
        metadata.update({k: v for k, v in first_meta.items() if k in ("versions", "git_commit", "dataset")})
    rows = _write_combined(jobs, sweep_dir / RESULTS_FILE, metadata)

    trials_tmp = sweep_dir / (TRIALS_FILE + ".tmp")
    pq.write_table(_trials_table(jobs), trials_tmp)
    os.replace(trials_tmp, sweep_dir / TRIALS_FILE)

    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    record: dict[str, Any] = {
        "sweep_dir": str(sweep_dir.resolve()),
        "status": status,
        "combined_at": combined_at,
        "results": RESULTS_FILE,
        "trials": TRIALS_FILE,
        "rows": rows,
        "jobs_total": len(jobs),
        "job_counts": counts,
        "jobs": job_records(),
    }
    previous = _read_json(sweep_dir / SWEEP_JSON) or {}
    for key in ("started_at", "command_overrides", "sweeper", "launcher"):
        if key in previous:
            record[key] = previous[key]
    optuna = _read_yaml(sweep_dir / OPTUNA_RESULTS_FILE)
    if isinstance(optuna, dict):
        record["optimization"] = optuna
    _write_json(sweep_dir / SWEEP_JSON, record)
    return record


def _first_job_metadata(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    for job in jobs:
        for path in job["files"]:
            schema = _readable_schema(path)
            raw = (schema.metadata or {}).get(METADATA_KEY) if schema is not None else None
            if raw:
                try:
                    return json.loads(raw)
                except ValueError:
                    pass
    return {}


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- Hydra
ALLOW_FAILED_JOBS = "hydra.callbacks.combine_sweep.allow_failed_jobs"
_exit_codes: list[int] = []  # what the last multirun's end asked the command to exit with


def failed_jobs_exit(record: dict[str, Any], allow_failed_jobs: bool = False) -> tuple[int, list[str]]:
    """The exit code a finished sweep's ``record`` (sweep.json) calls for, and the lines that say why.

    Every job failed → 1, with each job's first error; some failed → 1 with a line per failed job (the table
    holds the others' rows), or 0 when ``allow_failed_jobs``; none failed → 0 and no lines.
    """
    jobs = record.get("jobs") or []
    failed = [j for j in jobs if j.get("status") != "ok"]
    if not failed:
        return 0, []
    lines = []
    for job in failed:
        error = " ".join(str(job.get("error") or "no job_status.json: the job did not finish").split())
        overrides = " ".join(job.get("overrides") or []) or "no overrides"
        lines.append(f"sentech-eval sweep: job {job.get('job')} ({overrides}) {job.get('status')}: {error[:500]}")
    if len(failed) == len(jobs):
        lines.append(f"sentech-eval sweep: error: every job failed ({len(jobs)} of {len(jobs)}; first errors above).")
        return 1, lines
    others = f"{len(failed)} of {len(jobs)} jobs failed; {record.get('rows', 0)} rows of the other jobs are combined"
    if allow_failed_jobs:
        lines.append(f"sentech-eval sweep: warning: {others} ({ALLOW_FAILED_JOBS}=true).")
        return 0, lines
    lines.append(f"sentech-eval sweep: error: {others}; set {ALLOW_FAILED_JOBS}=true to exit 0 when some jobs fail.")
    return 1, lines


def take_sweep_exit_code() -> int:
    """The exit code the last finished multirun of this process calls for (0 if none ran); resets it."""
    code = max(_exit_codes, default=0)
    _exit_codes.clear()
    return code


class CombineSweepResults(Callback):
    """Hydra callback: combine the sweep's results when the multirun ends (or the process exits).

    ``allow_failed_jobs`` (``hydra.callbacks.combine_sweep.allow_failed_jobs=true``): a sweep where only some
    jobs failed exits 0; by default it exits 1 (a sweep where every job failed always does).
    """

    def __init__(self, allow_failed_jobs: bool = False) -> None:
        self._sweep_dir: Path | None = None
        self._combined = False
        self.allow_failed_jobs = bool(allow_failed_jobs)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Note the sweep dir (resolving it now fixes its timestamp) and arm the exit fallback."""
        self._sweep_dir = Path(str(config.hydra.sweep.dir))
        self._combined = False
        self._sweep_dir.mkdir(parents=True, exist_ok=True)
        if not (self._sweep_dir / MULTIRUN_FILE).exists():
            # the sweep as typed, for a job's resume command (commands/run.py): Hydra's basic sweeper
            # saves this file, others (Optuna) do not
            OmegaConf.save(config, self._sweep_dir / MULTIRUN_FILE)
        previous = _read_json(self._sweep_dir / SWEEP_JSON) or {}
        _write_json(
            self._sweep_dir / SWEEP_JSON,
            {
                **previous,
                "sweep_dir": str(self._sweep_dir.resolve()),
                "status": "running",
                "started_at": datetime.now(UTC).isoformat(),
                "command_overrides": list(config.hydra.overrides.task),
                "sweeper": str(config.hydra.sweeper.get("_target_", "")),
                "launcher": str(config.hydra.launcher.get("_target_", "")),
            },
        )
        atexit.register(self._combine_at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Every job has returned: combine their results, unless the sweeper already combined this
        multirun (a race does, for its report: sweep.json no longer says ``running``)."""
        sweep_dir = self._sweep_dir or Path(str(config.hydra.sweep.dir))
        self._combined = True
        record = _read_json(sweep_dir / SWEEP_JSON) or {}
        if record.get("status") == "running" or "job_counts" not in record:
            record = combine(sweep_dir)
        print_combined(record)
        code, lines = failed_jobs_exit(record, self.allow_failed_jobs)
        for line in lines:
            print(terminal_text(line), file=sys.stderr)
        _exit_codes.append(code)

    def _combine_at_exit(self) -> None:
        # Runs while the interpreter shuts down, when a module that registers a threading exit hook
        # can no longer be imported: pyarrow's Python→Arrow conversions import pandas, which imports
        # concurrent.futures.thread. That one is imported with this module (at the top) for that reason.
        if self._combined or self._sweep_dir is None or not self._sweep_dir.is_dir():
            return
        self._combined = True
        try:
            print_combined(combine(self._sweep_dir, status="incomplete"))
        except Exception as exc:  # noqa: BLE001 - at exit, say what failed and how to retry
            print(
                f"sentech-eval sweep: could not combine {self._sweep_dir} ({exc}); "
                f"retry with: sentech-eval combine {self._sweep_dir}",
                file=sys.stderr,
            )


def print_combined(record: dict[str, Any]) -> None:
    """The one line (plus a race's winner, when there is a race) that says what ``combine`` wrote."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(record["job_counts"].items())) or "no jobs"
    line = (
        f"sentech-eval sweep: {record['rows']} rows from {record['jobs_total']} jobs ({counts}) -> "
        f"{Path(record['sweep_dir']) / RESULTS_FILE}"
    )
    best = record.get("optimization") or {}
    if "best_params" in best:
        line += f"; best {best.get('best_value')} at {best['best_params']}"
    print(terminal_text(line), file=sys.stderr)
    race = race_line(Path(record["sweep_dir"]))
    if race:
        print(terminal_text(race), file=sys.stderr)  # a race's winner stays the last line printed
