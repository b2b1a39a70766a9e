"""``sentech-eval score PATH scorers=[...]``: add or replace score columns in existing results.

No model is queried (only the judge scorer sends requests, to its own backend). Every
``results.parquet`` under PATH is rewritten atomically: the new table goes to a temporary file
in the same directory, which then replaces the old one with ``os.replace``; a crash at any
point leaves the old file as it was. The Parquet key-value metadata is kept, and the scorer
config used is added under the ``sentech_eval_scoring`` key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sentech_eval.config import JobSpec, ScorerSpec, compose_config, job_spec
from sentech_eval.engine.results import RESULTS_FILE, read_parquet
from sentech_eval.engine.rundir import holding_run_dir
from sentech_eval.errors import ConfigError, ResultsError
from sentech_eval.scorers.base import Scorer, build_scorers, close_scorers, null_scores, score_row, score_schema
from sentech_eval.secrets import refuse_secret_overrides

SCORING_METADATA_KEY = b"sentech_eval_scoring"
ROW_CHUNK = 1024

EPILOG = """\
overrides are Hydra overrides on the same config as `sentech-eval run`, for example:
  scorers=[exact_match,contains]            choose scorers (conf/scorers/*.yaml)
  scorers=[numeric] scorers.numeric.tolerance=0.01
  scorers=[regex] "scorers.regex.pattern='answer:\\s*(\\w+)'"   (quoted twice: shell, then Hydra)
  +scorers.mine._target_=my_pkg.my_module.my_function   your own f(output, reference, row)
  scorers=[judge] scorers.judge.backend.base_url=http://127.0.0.1:8000/v1 scorers.judge.backend.model=grader
  scorers=[judge] backend@scorers.judge.backend=local     the embedded GGUF model as judge

PATH is a results.parquet file, a run dir or a sweep dir (every results.parquet below it,
including a sweep's combined one).
Existing columns of the chosen scorers are replaced; other score columns are kept.
Rows with status "error" get null scores. Each file is replaced atomically.
"""


def scoring_spec(overrides: list[str]) -> JobSpec:
    """The job spec ``sentech-eval run`` would build for these overrides (its ``scorers`` are used)."""
    refuse_secret_overrides(list(overrides))
    return job_spec(compose_config(list(overrides)))


def find_results_files(path: str | Path) -> list[Path]:
    """The results files at PATH: the file itself, ``PATH/results.parquet`` or every one below PATH."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"Results path {path} does not exist; pass a results.parquet file or a run/sweep dir.")
    if path.is_file():
        return [path]
    # a run dir holds one; a sweep dir holds one per job plus the combined one: score them all
    files = sorted(p for p in path.rglob(RESULTS_FILE) if "results.parts" not in p.parts)
    if not files:
        raise ResultsError(f"No {RESULTS_FILE} found under {path}; point at a run dir or a results file.")
    return files


async def score_table(table: pa.Table, scorers: list[Scorer], concurrency: int = 16) -> dict[str, pa.Array]:
    """The score columns for every row of ``table`` (nulls for rows whose status is not "ok")."""
    schema = score_schema(scorers)
    values: dict[str, list[Any]] = {col: [] for col in schema}
    semaphore = asyncio.Semaphore(max(1, concurrency))
    has_status = "status" in table.column_names

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        if has_status and row.get("status") != "ok":
            return null_scores(scorers)
        async with semaphore:
            return await score_row(scorers, row)

    for batch in table.to_batches(max_chunksize=ROW_CHUNK):
        rows = batch.to_pylist()
        results = await asyncio.gather(*(one(r) for r in rows))
        for result in results:
            for col in schema:
                values[col].append(result.get(col))
    arrays = {}
    for col, typ in schema.items():
        try:
            arrays[col] = pa.array(values[col], type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ConfigError(
                f"Column {col!r} got values that are not {typ} ({exc}); fix the scorer that writes it."
            ) from None
    return arrays


def replace_columns(table: pa.Table, arrays: dict[str, pa.Array]) -> pa.Table:
    """``table`` with ``arrays`` replacing same-named columns or appended; metadata kept."""
    metadata = table.schema.metadata
    for col, array in arrays.items():
        field = pa.field(col, array.type)
        index = table.schema.get_field_index(col)
        table = table.set_column(index, field, array) if index >= 0 else table.append_column(field, array)
    return table.replace_schema_metadata(metadata)


def write_atomic(table: pa.Table, target: Path) -> None:
    """Write ``table`` to a temp file beside ``target``, then ``os.replace`` it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


async def rescore_file(path: Path, scorers: list[Scorer], scorer_config: Any = None, concurrency: int = 16) -> pa.Table:
    """Score every ok row of one results file and replace the file atomically; returns the new table."""
    table = read_parquet(path)  # not Parquet: one sentence naming it; the file is kept
    if "output" not in table.column_names:
        raise ResultsError(f"Results file {path} has no 'output' column; is it a sentech-eval results file?")
    arrays = await score_table(table, scorers, concurrency=concurrency)
    new = replace_columns(table, arrays)
    metadata = dict(new.schema.metadata or {})
    metadata[SCORING_METADATA_KEY] = json.dumps(
        {"scored_at": datetime.now(UTC).isoformat(), "scorers": scorer_config}, default=str
    ).encode()
    new = new.replace_schema_metadata(metadata)
    write_atomic(new, path)
    return new


def _summary_line(path: Path, table: pa.Table, scorers: list[Scorer]) -> str:
    import pyarrow.compute as pc

    status = table.column("status") if "status" in table.column_names else None
    ok = table.num_rows if status is None else pc.sum(pc.equal(status, "ok")).as_py() or 0
    parts = [f"{path}: {table.num_rows} rows, {ok} ok"]
    for scorer in scorers:
        for col, typ in scorer.columns().items():
            if col.endswith("_detail") or not pa.types.is_floating(typ):
                continue
            mean = pc.mean(table.column(col)).as_py()
            parts.append(f"{col} mean={'n/a' if mean is None else f'{mean:.4f}'}")
    return "; ".join(parts)


def main(argv: list[str] | None = None, prog: str = "sentech-eval score") -> int:
    """Entry point of ``sentech-eval score``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Add or replace score columns in existing results without querying the model again.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", help="a results.parquet file, a run dir or a sweep dir")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, at least scorers=[...]")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="rows scored at once (matters for the judge; default 16)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency={args.concurrency} must be at least 1.")
    spec = scoring_spec(args.overrides)
    if not spec.scorers:
        raise ConfigError("No scorers chosen; pass for example scorers=[exact_match,contains] (see --help).")
    scorer_config = spec.saved_config.get("scorers")  # resolved and redacted, for the files' metadata
    target = Path(args.path)
    with holding_run_dir(target if target.is_dir() else target.parent, "score"):  # no run may merge meanwhile
        files = find_results_files(args.path)
        return asyncio.run(_run(files, spec.scorers, scorer_config, args.concurrency))


async def _run(files: list[Path], scorer_specs: tuple[ScorerSpec, ...], scorer_config: Any, concurrency: int) -> int:
    scorers = build_scorers(scorer_specs)
    try:
        for path in files:
            with holding_run_dir(path.parent, "score"):  # a run resuming there would merge over these scores
                table = await rescore_file(path, scorers, scorer_config, concurrency=concurrency)
            print(_summary_line(path, table, scorers))
    finally:
        await close_scorers(scorers)
    return 0
