"""Open-loop load: the arrival processes, the schedule a real run keeps, and the saturation knee.

1. Arrival statistics (no server): 100,000 Poisson gaps at 50 req/s pass a Kolmogorov-Smirnov test
   against the exponential (p > 0.01) and their coefficient of variation is 1 ± 0.05; over 400
   independent seeds the KS test at alpha 0.05 rejects about 5 % of them (its type-I error: the
   gaps are exponential, not merely close); gamma gaps with burstiness 0.25 and 4 have CV 2 and
   0.5 (± 5 %).
2. Schedule fidelity: `sentech-eval run backend=remote runner.arrival=constant runner.rate=200` for
   30 s (6,000 prompts) against `sentech-eval serve --engine echo --latency-ms 20`, each in its own
   process: the achieved send rate (from the rows' scheduled_s + send_lag_s) is within 1 % of 200
   and the p99 send lag is reported.
3. The knee: `serve --capacity 32 --ttft-ms 100 --output-tokens 1` saturates at 32 / 0.1 s = 320
   requests/s (queueing truth). One `sentech-eval run runner.arrival=constant` per rate from 160 to
   480 requests/s (4 s of sends each), then the report's knee (the last rate before p99 latency
   grows faster than the rate, ``analysis.slo.saturation_knee``) must lie within 10 % of 320.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path

import numpy as np
from common import BENCH_KEY, REPO_ROOT, arg_parser, echo_server, emit, log, machine, make_prompt_dataset

KNEE_RATES = (160, 240, 280, 300, 310, 330, 350, 400, 480)
KNEE_SECONDS = 4.0


def arrival_statistics(quick: bool) -> None:
    from scipy import stats

    from sentech_eval.engine.arrival import arrival_gaps, arrival_offsets

    n = 20_000 if quick else 100_000
    gaps = np.diff(np.fromiter(islice(arrival_offsets("poisson", 50.0, seed=11), n + 1), float))
    ks = stats.kstest(gaps, "expon", args=(0, 1 / 50.0))
    cv = float(gaps.std() / gaps.mean())
    emit(
        "load.poisson_ks_pvalue",
        float(ks.pvalue),
        "> 0.01 (exponential gaps)",
        bool(ks.pvalue > 0.01),
        ks_statistic=float(ks.statistic),
        gaps=n,
        quick=quick,
    )
    emit("load.poisson_cv", cv, "1 ± 0.05", bool(abs(cv - 1) <= 0.05), mean_gap_s=float(gaps.mean()), quick=quick)
    # the same test over many seeds: at alpha = 0.05 an exponential generator is rejected ~5 % of the time
    seeds = 50 if quick else 400
    rejected = sum(
        stats.kstest(
            np.diff(np.fromiter(islice(arrival_offsets("poisson", 50.0, seed=s), 2001), float)),
            "expon",
            args=(0, 1 / 50.0),
        ).pvalue
        < 0.05
        for s in range(1000, 1000 + seeds)
    )
    rate = rejected / seeds
    emit(
        "load.poisson_ks_rejection_rate_at_0_05",
        rate,
        "0.05 ± 0.03 over independent seeds",
        bool(0.02 <= rate <= 0.08),
        seeds=seeds,
        gaps_each=2000,
        quick=quick,
    )
    rng = np.random.default_rng(5)
    cvs = {}
    for b in (0.25, 4.0):
        g = arrival_gaps("gamma", 50.0, n, burstiness=b, rng=rng)
        cvs[b] = float(g.std() / g.mean())
    ok = all(abs(cvs[b] * np.sqrt(b) - 1) <= 0.05 for b in cvs)
    emit(
        "load.gamma_cv_times_sqrt_burstiness",
        max(abs(cvs[b] * np.sqrt(b) - 1) for b in cvs),
        "<= 0.05",
        bool(ok),
        cv_at_0_25=cvs[0.25],
        cv_at_4=cvs[4.0],
        quick=quick,
    )


def _run(url: str, dataset: Path, out: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "sentech_eval.cli",
        "run",
        "backend=remote",
        f"backend.base_url={url}",
        f"dataset.path={dataset}",
        "runner.progress=false",
        *overrides,
    ]
    cmd.append(f"hydra.sweep.dir={out}" if multirun else f"hydra.run.dir={out}")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "SENTECH_API_KEY": BENCH_KEY}, cwd=REPO_ROOT
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sentech-eval run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def constant_rate(quick: bool, tmp: Path) -> None:
    import pandas as pd

    rate, seconds = 200.0, (3.0 if quick else 30.0)
    rows = int(rate * seconds)
    dataset = make_prompt_dataset(tmp / "constant.parquet", rows)
    with echo_server(latency_ms=20) as server:
        proc = _run(
            server.url,
            dataset,
            tmp / "constant",
            "runner.arrival=constant",
            f"runner.rate={rate:g}",
            "runner.concurrency=64",
        )
    df = pd.read_parquet(tmp / "constant" / "results.parquet", columns=["status", "scheduled_s", "send_lag_s"])
    sends = np.sort((df["scheduled_s"] + df["send_lag_s"]).to_numpy())
    achieved = (len(sends) - 1) / (sends[-1] - sends[0])
    lag = df["send_lag_s"].to_numpy()
    log(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "")
    ratio = achieved / rate
    emit(
        "load.constant_200rps_achieved_ratio",
        ratio,
        "within 1 % of 1",
        bool(abs(ratio - 1) <= 0.01),
        achieved_rps=achieved,
        seconds=seconds,
        rows=len(df),
        ok=int((df["status"] == "ok").sum()),
        send_lag_p50_ms=1000 * float(np.percentile(lag, 50)),
        send_lag_p99_ms=1000 * float(np.percentile(lag, 99)),
        quick=quick,
        machine=machine(),
    )


def knee(quick: bool, tmp: Path) -> None:
    from sentech_eval import load_results
    from sentech_eval.analysis.slo import load_summary, saturation_knee

    rates = (160, 300, 350, 480) if quick else KNEE_RATES
    seconds = 1.5 if quick else KNEE_SECONDS
    rows = int(max(rates) * seconds)
    dataset = make_prompt_dataset(tmp / "knee.parquet", rows)
    truth = 32 / 0.1
    jobs = []
    with echo_server(capacity=32, ttft_ms=100, output_tokens=1) as server:
        for rate in rates:  # one job per rate, each sending for the same time
            out = tmp / f"knee-{rate}"
            _run(
                server.url,
                dataset,
                out,
                "runner.arrival=constant",
                f"runner.rate={rate}",
                "runner.concurrency=2048",
                f"dataset.limit={int(rate * seconds)}",
            )
            jobs.append(out)
            log(f"knee: {rate} req/s done")
    frames = [load_results(j) for j in jobs]
    import pandas as pd

    table = load_summary(pd.concat(frames, ignore_index=True))
    index = saturation_knee(table["achieved_rps"].tolist(), table["latency_s_p99"].tolist())
    found = float(table["achieved_rps"].iloc[index]) if index is not None else float("nan")
    error = abs(found - truth) / truth if index is not None else float("inf")
    emit(
        "load.knee_capacity32_rps",
        found,
        f"within 10 % of {truth:g}",
        bool(error <= 0.10),
        truth_rps=truth,
        relative_error=error,
        achieved_rps=table["achieved_rps"].tolist(),
        p99_latency_s=table["latency_s_p99"].tolist(),
        throughput_rps=table["throughput_rps"].tolist(),
        seconds_per_rate=seconds,
        quick=quick,
        machine=machine(),
    )


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    arrival_statistics(args.quick)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        constant_rate(args.quick, Path(tmp))
        knee(args.quick, Path(tmp))


if __name__ == "__main__":
    main()
