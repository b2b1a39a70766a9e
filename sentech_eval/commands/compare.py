"""``sentech-eval compare A B``: paired comparison of two results (e.g. remote vs local).

Writes ``compare.parquet`` (one row per metric) and ``compare.html`` into ``--out`` (default: the
current directory) and prints a markdown summary; ``--judge`` adds the pairwise judge's rows and
``judge.parquet``. The metrics are ``analysis.compare``'s; the judge is ``analysis.judge``.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from sentech_eval.analysis.compare import compare, comparison_warnings, default_label, disagreements, metrics_frame
from sentech_eval.analysis.judge import judge_pairs, judge_rows
from sentech_eval.analysis.pairing import pair_results
from sentech_eval.config import JobSpec, compose_config, job_spec
from sentech_eval.engine.rundir import prepare_run_dir
from sentech_eval.errors import ConfigError
from sentech_eval.render.compare_html import render_html
from sentech_eval.render.markdown import compare_markdown
from sentech_eval.secrets import refuse_secret_overrides


def judge_spec(overrides: list[str]) -> JobSpec:
    """The pairwise judge's job spec from ``--judge``'s overrides (``sampling=greedy`` and
    ``sampling.max_tokens=256`` unless overridden), composed as ``sentech-eval run`` composes its config."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(
            f"--judge takes Hydra overrides such as backend=local, got {bad[0]!r}; put A and B before --judge."
        )
    refuse_secret_overrides(overrides)
    names = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    defaults = []
    if "sampling" not in names:
        defaults.append("sampling=greedy")
    if "sampling.max_tokens" not in names:
        defaults.append("sampling.max_tokens=256")  # room for a judge that reasons before its verdict
    overrides = [*defaults, *overrides]
    try:
        return job_spec(compose_config(overrides, job_name="compare_judge"))
    except ConfigError as exc:
        raise ConfigError(f"--judge {' '.join(overrides)}: {exc}") from None


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Paired comparison of two results (files, run dirs or sweep dirs): scores with paired 95% CIs "
        "(Newcombe for 0/1 scores, the bootstrap otherwise) and McNemar-type p-values (exact McNemar with "
        "one pair per prompt, the clustered McNemar with several), latency/TTFT/token ratios, error rates "
        "and output agreement. The prompt is the unit of evidence: repeats and sweep points of one prompt "
        "are never counted as independent pairs.",
        epilog="Writes compare.parquet and compare.html into --out (default: the current directory) and prints a "
        "markdown summary. Put --judge last: every argument after it is a Hydra override.",
    )
    parser.add_argument("a", help="results A (the reference, e.g. the remote run)")
    parser.add_argument("b", help="results B (e.g. the local run); differences are B − A")
    parser.add_argument("--out", default=".", help="directory for compare.parquet and compare.html (default: .)")
    parser.add_argument("--examples", type=int, default=10, help="disagreeing pairs shown in the HTML (default: 10)")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI level (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument(
        "--cluster",
        metavar="COLUMN",
        default=None,
        help="column whose pairs are one unit of evidence (default: prompt_id)",
    )
    parser.add_argument("--label-a", default=None, help="name for A in the outputs (default: its backend/model)")
    parser.add_argument("--label-b", default=None, help="name for B in the outputs")
    parser.add_argument(
        "--judge",
        nargs="+",
        metavar="OVERRIDE",
        default=None,
        help="pairwise LLM judge: Hydra overrides such as backend=local or backend=remote "
        "backend.base_url=... (asks twice, order swapped)",
    )
    parser.add_argument("--judge-limit", type=int, default=None, help="judge at most this many pairs")
    return parser


def main(argv: list[str], prog: str = "sentech-eval compare") -> int:
    """Compare two results and write compare.parquet, compare.html and a markdown summary."""
    args = build_parser(prog).parse_args(argv)
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence must be between 0 and 1, got {args.confidence}.")
    paired = pair_results(args.a, args.b, "A", "B")
    paired.label_a = args.label_a or default_label(paired.a, "A")
    paired.label_b = args.label_b or default_label(paired.b, "B")
    metrics = compare(paired, args.confidence, args.seed, cluster=args.cluster)
    judgements = None
    if args.judge:
        judgements = judge_pairs(paired, judge_spec(args.judge), limit=args.judge_limit)
        metrics = pd.concat(
            [metrics, metrics_frame(judge_rows(judgements, args.confidence, args.seed))], ignore_index=True
        )
    out = prepare_run_dir(args.out, "--out")  # an existing file, an unwritable place: one sentence
    metrics.to_parquet(out / "compare.parquet", index=False)
    if judgements is not None:
        judgements.to_parquet(out / "judge.parquet", index=False)
    html = render_html(paired, metrics, disagreements(paired, args.examples), judgements)
    (out / "compare.html").write_text(html, encoding="utf-8")
    sys.stdout.write(compare_markdown(metrics, paired.label_a, paired.label_b, comparison_warnings(paired)))
    written = ["compare.parquet", "compare.html"] + (["judge.parquet"] if judgements is not None else [])
    sys.stdout.write(f"\nWrote {', '.join(str(out / name) for name in written)}.\n")
    return 0
