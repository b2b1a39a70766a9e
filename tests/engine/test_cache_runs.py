"""The response cache end to end: runs (in this process, as `sentech-eval run` composes them; a few
through the CLI itself) against the real echo server on a loopback port that counts the requests
reaching it."""

from __future__ import annotations

import pandas as pd
import pytest
from cache_support import counting_server, run_in_process
from cli_helpers import REPO_ROOT, TEST_KEY, call_cli

from sentech_eval import load_results
from sentech_eval.cli import main as cli_main
from sentech_eval.engine.results import read_metadata
from sentech_eval.errors import CacheError

ENV = {"SENTECH_API_KEY": TEST_KEY}
N = 12


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("SENTECH_API_KEY", TEST_KEY)


@pytest.fixture()
def server():
    with counting_server(TEST_KEY) as s:
        yield s


def overrides(server, cache_dir, *extra):
    return [
        "backend=remote",
        f"backend.base_url={server.url}",
        "dataset=arithmetic",
        f"dataset.limit={N}",
        f"dataset.path={REPO_ROOT / 'datasets' / 'arithmetic.parquet'}",
        f"runner.cache_dir={cache_dir}",
        "runner.progress=false",
        *extra,
    ]


def run(server, run_dir, cache_dir, *extra):
    """One run with the cache at cache_dir; returns (its stderr, requests that reached the server)."""
    before = server.requests
    _, err = run_in_process(run_dir, overrides(server, cache_dir, *extra))
    return err, server.requests - before


def cli(capsys, *args):
    """`sentech-eval ARGS` in this process: (exit code, stdout, stderr)."""
    code = cli_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


SEEDED = ("runner.cache=on", "backend.send_seed=true")


def test_a_hit_returns_the_identical_answer_and_sends_nothing(server, tmp_path):
    first, sent = run(server, tmp_path / "a", tmp_path / "c", *SEEDED)
    assert sent == N
    assert "0 from cache" in first
    second, sent = run(server, tmp_path / "b", tmp_path / "c", *SEEDED)
    assert sent == 0  # not one request reached the server
    assert f"{N} from cache" in second and "measured no latency" in second
    a, b = load_results(tmp_path / "a"), load_results(tmp_path / "b")
    assert not a["cached"].any() and b["cached"].all()
    merged = a.merge(b, on=["prompt_id", "repeat"], suffixes=("_a", "_b"))
    assert len(merged) == N
    for column in (
        "output",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "latency_s",
        "started_at",
        "http_status",
        "cache_key",
        "messages_sha256",
    ):
        pd.testing.assert_series_equal(merged[f"{column}_a"], merged[f"{column}_b"], check_names=False)
    assert set(b["cached_from"]) == set(a["run_id"]) and b["run_id"].iloc[0] != a["run_id"].iloc[0]
    assert (b["attempts"] == 0).all()
    meta = read_metadata(tmp_path / "b" / "results.parquet")
    assert meta["cache"]["mode"] == "on" and meta["cache"]["context"]["base_url"] == server.url
    assert TEST_KEY not in str(meta)


def test_the_cache_is_off_by_default(server, tmp_path):
    for name in ("a", "b"):
        err, sent = run(server, tmp_path / name, tmp_path / "c")
        assert sent == N and "from cache" not in err
    frame = load_results(tmp_path / "b")
    assert not {"cached", "cached_from", "cache_key", "messages_sha256"} & set(
        frame.columns
    )  # the off path adds nothing
    assert not (tmp_path / "c").exists()


def test_repeats_hit_per_repeat_with_their_own_answers(server, tmp_path):
    _, sent = run(server, tmp_path / "a", tmp_path / "c", *SEEDED, "runner.repeats=3", "sampling.temperature=1.0")
    assert sent == 3 * N
    a = load_results(tmp_path / "a")
    assert a.groupby("prompt_id")["output"].nunique().max() > 1  # the seeded echo server answers repeats differently
    _, sent = run(server, tmp_path / "b", tmp_path / "c", *SEEDED, "runner.repeats=3", "sampling.temperature=1.0")
    assert sent == 0
    b = load_results(tmp_path / "b")
    merged = a.merge(b, on=["prompt_id", "repeat"], suffixes=("_a", "_b"))
    assert len(merged) == 3 * N and (merged["output_a"] == merged["output_b"]).all()
    assert (merged["seed_a"] == merged["seed_b"]).all()
    # a fourth repeat was never asked: only it is sent
    _, sent = run(server, tmp_path / "c4", tmp_path / "c", *SEEDED, "runner.repeats=4", "sampling.temperature=1.0")
    assert sent == N
    assert load_results(tmp_path / "c4").groupby("repeat")["cached"].all().tolist() == [True, True, True, False]


def test_errors_are_not_cached_and_are_asked_again(tmp_path):
    with counting_server(TEST_KEY, seed=7, error_rate=0.5, error_status=500) as server:
        _, sent = run(server, tmp_path / "a", tmp_path / "c", *SEEDED, "runner.max_retries=0")
        a = load_results(tmp_path / "a")
        errors = int((a["status"] == "error").sum())
        assert 0 < errors < N and sent == N
        _, sent = run(server, tmp_path / "b", tmp_path / "c", *SEEDED, "runner.max_retries=0")
        assert sent == errors  # only the rows that failed are asked again
        b = load_results(tmp_path / "b")
        ok_before = set(a.loc[a["status"] == "ok", "prompt_id"])
        assert set(b.loc[b["cached"], "prompt_id"]) == ok_before


def test_only_mode_answers_misses_with_an_error_row_and_sends_nothing(server, tmp_path):
    _, sent = run(server, tmp_path / "a", tmp_path / "c", "runner.cache=only", "backend.send_seed=true")
    assert sent == 0
    frame = load_results(tmp_path / "a")
    assert (frame["status"] == "error").all() and frame["error"].str.startswith("not in cache").all()


def test_refresh_sends_everything_and_overwrites(server, tmp_path):
    run(server, tmp_path / "a", tmp_path / "c", *SEEDED)
    _, sent = run(server, tmp_path / "b", tmp_path / "c", "runner.cache=refresh", "backend.send_seed=true")
    assert sent == N
    _, sent = run(server, tmp_path / "d", tmp_path / "c", *SEEDED)
    assert sent == 0
    d, b = load_results(tmp_path / "d"), load_results(tmp_path / "b")
    assert set(d["cached_from"]) == set(b["run_id"])


def test_seedless_sampling_is_not_served_unless_allowed(server, tmp_path):
    # backend.send_seed defaults to false: the server samples on its own, each answer is a new sample
    run(server, tmp_path / "a", tmp_path / "c", "runner.cache=on")
    err, sent = run(server, tmp_path / "b", tmp_path / "c", "runner.cache=on")
    assert sent == N
    assert f"{N} seedless requests at temperature > 0 were not served" in err
    _, sent = run(server, tmp_path / "d", tmp_path / "c", "runner.cache=on", "runner.cache_unseeded=true")
    assert sent == 0


def test_a_damaged_cache_file_goes_on_without_the_cache_or_stops(server, tmp_path):
    cache_file = tmp_path / "c" / "responses.sqlite"
    cache_file.parent.mkdir()
    cache_file.write_bytes(b"not a database at all " * 500)
    err, sent = run(server, tmp_path / "a", tmp_path / "c", *SEEDED)
    assert sent == N
    assert "unusable" in err and "goes on without the cache" in err
    assert len(load_results(tmp_path / "a")) == N
    with pytest.raises(CacheError, match="unusable"):
        run(server, tmp_path / "b", tmp_path / "c", *SEEDED, "runner.cache_on_corrupt=stop")
    # the same through the CLI: exit 2, one sentence, no traceback, no request
    before = server.requests
    proc = call_cli(
        "run",
        *overrides(server, tmp_path / "c", *SEEDED, "runner.cache_on_corrupt=stop"),
        f"hydra.run.dir={tmp_path / 'd'}",
        env=ENV,
    )
    assert proc.returncode == 2 and server.requests == before
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error:" in line][0].count("unusable") == 1


def test_a_bad_cache_mode_is_one_sentence(tmp_path):
    proc = call_cli("run", "backend=remote", "runner.cache=sometimes", f"hydra.run.dir={tmp_path / 'x'}", env=ENV)
    assert proc.returncode == 2
    assert "runner.cache='sometimes' is not a cache mode; choose one of: off, on, refresh, only." in proc.stderr
    assert "Traceback" not in proc.stderr


def test_explain_names_the_fields_that_differ_on_a_miss(server, tmp_path, capsys):
    run(server, tmp_path / "a", tmp_path / "c", *SEEDED, "sampling.seed=5", "sampling.top_p=0.8")
    _, sent = run(
        server, tmp_path / "b", tmp_path / "c", "runner.cache=only", "backend.send_seed=true", "sampling.seed=6"
    )
    assert sent == 0
    prompt_id = load_results(tmp_path / "b")["prompt_id"].iloc[0]
    code, text, err = cli(
        capsys,
        "cache",
        "explain",
        str(tmp_path / "b"),
        str(prompt_id),
        "--repeat",
        "0",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert code == 0, err
    assert "not in cache" in text and "in the cache now: no." in text
    assert "they differ!" not in text  # the key recomputed from the recorded fields is the row's key
    assert "nearest cached entries for the same messages (1 in all)" in text
    assert "differs in seed: 5 (this row 6), top_p: 0.8 (this row 0.9)" in text
    _, hit, _ = cli(capsys, "cache", "explain", str(tmp_path / "a"), str(prompt_id), "--cache-dir", str(tmp_path / "c"))
    assert "in the cache now: yes" in hit and "base_url" in hit and "messages_sha256" in hit
    code, _, err = cli(
        capsys, "cache", "explain", str(tmp_path / "a"), "no-such-id", "--cache-dir", str(tmp_path / "c")
    )
    assert code == 2 and "no row for prompt_id 'no-such-id'" in err


def test_stats_and_clear(server, tmp_path, capsys):
    run(server, tmp_path / "a", tmp_path / "c", *SEEDED)
    run(server, tmp_path / "b", tmp_path / "c", *SEEDED)
    code, out, err = cli(capsys, "cache", "stats", "--cache-dir", str(tmp_path / "c"))
    assert code == 0, err
    assert f"entries: {N}" in out
    line = [ln for ln in out.splitlines() if ln.startswith("meta-llama/Meta-Llama-3.1-8B-Instruct")][0]
    assert line.split()[1:3] == [str(N), str(N)]  # entries, hits
    code, _, err = cli(capsys, "cache", "clear", "--older-than", "thirty days", "--cache-dir", str(tmp_path / "c"))
    assert code == 2 and "--older-than 'thirty days' is not a duration" in err
    assert (
        "removed 0 entries"
        in cli(capsys, "cache", "clear", "--older-than", "30d", "--cache-dir", str(tmp_path / "c"))[1]
    )
    gone = cli(
        capsys, "cache", "clear", "--model", "meta-llama/Meta-Llama-3.1-8B-Instruct", "--cache-dir", str(tmp_path / "c")
    )
    assert f"removed {N} entries" in gone[1]
    damaged = tmp_path / "d" / "responses.sqlite"
    damaged.parent.mkdir()
    damaged.write_bytes(b"junk" * 100)
    code, _, err = cli(capsys, "cache", "stats", "--cache-dir", str(damaged.parent))
    assert code == 2 and "unusable" in err
    code, out, _ = cli(capsys, "cache", "clear", "--cache-dir", str(damaged.parent))
    assert code == 0 and "the file is deleted" in out and not damaged.exists()
