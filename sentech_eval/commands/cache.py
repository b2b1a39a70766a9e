"""``sentech-eval cache``: look into and prune the response cache (see docs/cache.md).

sentech-eval cache stats                              entries, size on disk, hits by model
sentech-eval cache clear [--model M] [--older-than 30d]
sentech-eval cache explain RUN_DIR PROMPT_ID [--repeat R]
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from sentech_eval.engine.cache_keys import FLOAT_FIELDS, differing_fields, key_of
from sentech_eval.engine.cache_store import CachedAnswer, Entry, ResponseStore, cache_path, default_cache_dir
from sentech_eval.engine.results import RESULTS_FILE, read_metadata, read_run_table
from sentech_eval.errors import CacheError, ConfigError, ResultsError
from sentech_eval.escaping import terminal_lines
from sentech_eval.types import SAMPLING_PARAMS

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
NEAREST_SHOWN = 5


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds; ConfigError naming the flag otherwise."""
    match = DURATION.match(text)
    if not match:
        raise ConfigError(
            f"--older-than {text!r} is not a duration; write a number and a unit: 45s, 90m, 12h, 30d or 2w."
        )
    return float(match[1]) * UNIT_S[match[2]]


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ------------------------------------------------------------------------------------ stats
def stats(path: Path) -> str:
    """The text of ``cache stats``."""
    if not path.exists():
        return f"response cache: {path} (empty: no run has written to it yet)"
    store = ResponseStore(path, create=False)
    try:
        info = store.stats()
    finally:
        store.close()
    lines = [f"response cache: {path} ({_size(info['bytes'])})", f"entries: {info['entries']}"]
    if info["models"]:
        width = max(12, *(len(m) for m in info["models"]))
        lines.append(f"{'model':<{width}}  {'entries':>8}  {'hits':>8}  {'oldest':<20}  newest")
        for model, row in sorted(info["models"].items()):
            lines.append(
                f"{model:<{width}}  {row['entries']:>8}  {row['hits']:>8}  {_when(row['oldest']):<20}  "
                f"{_when(row['newest'])}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ clear
def clear(path: Path, model: str | None, older_than: str | None) -> str:
    """Delete entries; with no filter a damaged file is deleted whole. Returns the message."""
    older_than_s = parse_duration(older_than) if older_than is not None else None
    if not path.exists():
        return f"response cache: {path} does not exist; nothing to clear."
    try:
        store = ResponseStore(path, create=False)
    except CacheError:
        if model is None and older_than_s is None:
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
            return f"response cache: {path} was not a usable cache; the file is deleted."
        raise
    try:
        removed = store.clear(model=model, older_than_s=older_than_s)
    finally:
        store.close()
    what = (
        " and ".join(
            filter(None, [f"model {model!r}" if model else "", f"older than {older_than}" if older_than else ""])
        )
        or "all"
    )
    return f"response cache: removed {removed} entries ({what}) from {path}."


# ------------------------------------------------------------------------------------ explain
def _run_rows(run_dir: Path, prompt_id: str, repeat: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    run_dir = run_dir.parent if run_dir.is_file() else run_dir
    table = read_run_table(run_dir)
    if table is None:
        raise ResultsError(
            f"No results under {run_dir}; pass the run dir of a `sentech-eval run` "
            "(the one holding results.parquet; for a sweep, one job's dir)."
        )
    mask = pc.equal(table.column("prompt_id"), prompt_id)
    if repeat is not None:
        mask = pc.and_(mask, pc.equal(table.column("repeat"), repeat))
    rows = table.filter(mask).to_pylist()
    if not rows:
        where = f" repeat {repeat}" if repeat is not None else ""
        raise ResultsError(
            f"The results in {run_dir} have no row for prompt_id {prompt_id!r}{where}; "
            "check the id (the prompt_id column) and --repeat."
        )
    metadata: dict[str, Any] = {}
    if (run_dir / RESULTS_FILE).exists():
        metadata = read_metadata(run_dir / RESULTS_FILE)
    else:
        parts = sorted((run_dir / "results.parts").glob("part-*.parquet"))
        metadata = read_metadata(parts[0]) if parts else {}
    return rows, metadata


def row_key_fields(row: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """The key fields of one results row (without the messages): the run's context plus its sampling."""
    fields = dict(context)
    for name in SAMPLING_PARAMS:
        value = row.get(name)
        fields[name] = float(value) if value is not None and name in FLOAT_FIELDS else value
    if row.get("seed") is None:
        fields["repeat"] = row.get("repeat")
    return fields


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def explain_row(row: dict[str, Any], meta: dict[str, Any], store: ResponseStore | None) -> list[str]:
    """The lines explaining one row: its key fields, whether it is cached, and the nearest entries."""
    cache_meta = meta.get("cache") or {}
    head = (
        f"prompt {row['prompt_id']!r}, repeat {row['repeat']} (run {row.get('run_id')}, config {row.get('config_id')}):"
    )
    if not cache_meta or cache_meta.get("mode", "off") == "off" or not row.get("cache_key"):
        return [
            head,
            "  this run did not use the response cache (runner.cache=off), so it recorded no cache key; "
            "re-run with runner.cache=on to cache its answers.",
        ]
    fields = row_key_fields(row, cache_meta.get("context") or {})
    digest = row["messages_sha256"]
    key = key_of(fields, digest)
    lines = [head, f"  cache mode: {cache_meta.get('mode')}   file: {cache_meta.get('path')}"]
    if row.get("cached"):
        lines.append(
            f"  this row was answered from the cache (the original request was made by run {row.get('cached_from')})."
        )
    elif row.get("status") == "ok":
        lines.append(
            "  a miss: the request was sent"
            + (" and its ok answer written to the cache." if cache_meta.get("mode") in ("on", "refresh") else ".")
        )
    else:
        lines.append(f"  a miss, not cached: status {row.get('status')} ({row.get('error')}); errors are never cached.")
    lines.append(
        f"  key: {row['cache_key']}"
        + ("" if key == row["cache_key"] else f"  (recomputed from the fields below: {key}; they differ!)")
    )
    lines.append("  key fields:")
    width = max(len(n) for n in [*fields, "messages_sha256"])
    for name in sorted(fields):
        lines.append(f"    {name:<{width}}  {_show(fields[name])}")
    lines.append(f"    {'messages_sha256':<{width}}  {digest}")
    if store is None:
        lines.append(f"  the cache file {cache_meta.get('path')} does not exist now; nothing to compare with.")
        return lines
    answer: CachedAnswer | None = store.get(row["cache_key"])
    if answer is not None:
        lines.append(f"  in the cache now: yes (answer of run {answer.run_id}, requested {_when(answer.started_at)}).")
        return lines
    lines.append("  in the cache now: no.")
    same = [e for e in store.entries(messages_digest=digest) if e.key != row["cache_key"]]
    if same:
        lines.append(
            f"  nearest cached entries for the same messages ({len(same)} in all), and the fields that differ:"
        )
        lines += _nearest(fields, same)
        return lines
    others = store.entries(prompt_id=str(row["prompt_id"]))
    if others:
        lines.append(
            f"  no cached entry has these exact messages; {len(others)} entries for prompt id "
            f"{row['prompt_id']!r} have other messages (the prompt text changed), nearest first:"
        )
        lines += _nearest({**fields, "messages_sha256": digest}, others, with_digest=True)
    else:
        lines.append(
            "  no cached entry has these messages or this prompt id: it was never answered ok with the cache on."
        )
    return lines


def _nearest(fields: dict[str, Any], entries: list[Entry], *, with_digest: bool = False) -> list[str]:
    scored = []
    for entry in entries:
        theirs = {**entry.fields, "messages_sha256": entry.messages_sha256} if with_digest else entry.fields
        scored.append((differing_fields(fields, theirs), entry, theirs))
    scored.sort(key=lambda item: (len(item[0]), -item[1].created_at))
    lines = []
    for i, (names, entry, theirs) in enumerate(scored[:NEAREST_SHOWN], 1):
        diffs = ", ".join(f"{n}: {_show(theirs.get(n))} (this row {_show(fields.get(n))})" for n in names) or "nothing"
        lines.append(f"    {i}. differs in {diffs} — run {entry.run_id}, {_when(entry.created_at)}")
    if len(scored) > NEAREST_SHOWN:
        lines.append(f"    … and {len(scored) - NEAREST_SHOWN} more")
    return lines


def explain(run_dir: Path, prompt_id: str, repeat: int | None, cache_dir: str | None) -> str:
    """The text of ``cache explain``."""
    rows, meta = _run_rows(run_dir, prompt_id, repeat)
    recorded = (meta.get("cache") or {}).get("path")
    path = cache_path(cache_dir) if cache_dir else Path(recorded) if recorded else cache_path(None)
    store = ResponseStore(path, create=False) if path.exists() else None
    try:
        out: list[str] = []
        for row in sorted(rows, key=lambda r: (str(r.get("config_id")), r["repeat"])):
            out += explain_row(row, meta, store)
        return "\n".join(out)
    finally:
        if store is not None:
            store.close()


# ------------------------------------------------------------------------------------ CLI
def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argparse parser of ``sentech-eval cache``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Look into and prune the response cache (runner.cache=on|refresh|only; docs/cache.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"The cache file is {cache_path(None)} unless --cache-dir (or runner.cache_dir for runs) says otherwise.\n"
        "examples:\n  sentech-eval cache stats\n  sentech-eval cache clear --model my-model --older-than 30d\n"
        "  sentech-eval cache explain results/capitals/2026-11-26_01-00-00 capital-007 --repeat 0",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="{stats,clear,explain}")
    p_stats = sub.add_parser("stats", help="entries, size on disk, hits by model")
    p_clear = sub.add_parser("clear", help="delete entries (all, one model's, or older than a duration)")
    p_clear.add_argument("--model", help="only this model's entries (the model column of the results)")
    p_clear.add_argument(
        "--older-than", metavar="AGE", help="only entries written longer ago than AGE: 45s, 90m, 12h, 30d, 2w"
    )
    p_explain = sub.add_parser(
        "explain", help="a row's key fields; on a miss, the nearest cached entries and what differs"
    )
    p_explain.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run dir (holding results.parquet)")
    p_explain.add_argument("prompt_id", metavar="PROMPT_ID", help="the row's prompt_id")
    p_explain.add_argument("--repeat", type=int, default=None, help="only this repeat (default: every repeat)")
    for p in (p_stats, p_clear, p_explain):
        p.add_argument(
            "--cache-dir",
            default=None,
            help=f"the cache dir (default {default_cache_dir()}; explain: the one the run recorded)",
        )
    return parser


def main(argv: list[str], prog: str = "sentech-eval cache") -> int:
    """Entry point of ``sentech-eval cache``."""
    args = build_parser(prog).parse_args(argv)
    if args.action == "stats":
        print(terminal_lines(stats(cache_path(args.cache_dir))))
    elif args.action == "clear":
        print(terminal_lines(clear(cache_path(args.cache_dir), args.model, args.older_than)))
    else:
        print(terminal_lines(explain(args.run_dir, args.prompt_id, args.repeat, args.cache_dir)))
    return 0
