"""`sentech-eval score`: re-scoring existing results in place, atomically, without model requests."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import call_cli, run_cli
from synthetic_results import make_results

from sentech_eval.server.testing import running_server

TESTS_DIR = Path(__file__).resolve().parents[1]
PLUGINS_ENV = {"PYTHONPATH": str(TESTS_DIR)}  # so `scorers.plugins` imports in the subprocess


def write_results(path: Path, df: pd.DataFrame) -> Path:
    """A results file as the runner writes it: Arrow table with the sentech_eval metadata key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {
        **(table.schema.metadata or {}),
        b"sentech_eval": json.dumps({"config": {"backend": {"kind": "remote"}}}).encode(),
    }
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def results(n=12, **kw) -> pd.DataFrame:
    df = make_results(n=n, repeats=2, accuracy=0.75, error_ids={2}, **kw)
    df["score_exact_match"] = 0.5  # stale values that re-scoring must replace
    return df


def test_rescore_replaces_adds_and_keeps_columns_and_metadata(tmp_path):
    path = write_results(tmp_path / "run" / "results.parquet", results())
    before = pq.read_table(path)
    done = call_cli("score", str(tmp_path / "run"), "scorers=[exact_match,token_f1]")
    assert done.returncode == 0, done.stderr
    assert (
        "24 rows, 22 ok" in done.stdout and f"score_exact_match mean={18 / 22:.4f}" in done.stdout
    )  # prompts 0-2 wrong, 2 errored
    after = pq.read_table(path)
    df = after.to_pandas()
    assert after.schema.metadata[b"sentech_eval"] == before.schema.metadata[b"sentech_eval"]
    scoring = json.loads(after.schema.metadata[b"sentech_eval_scoring"])
    assert list(scoring["scorers"]) == ["exact_match", "token_f1"]
    assert after.column_names[: before.num_columns] == before.column_names  # replaced in place, new ones appended
    assert after.column_names[before.num_columns :] == ["score_token_f1", "score_token_f1_detail"]
    assert after.schema.field("score_token_f1").type == pa.float64()
    assert df[["prompt_id", "repeat", "output"]].equals(before.to_pandas()[["prompt_id", "repeat", "output"]])
    ok, err = df[df["status"] == "ok"], df[df["status"] == "error"]
    assert set(ok["score_exact_match"]) == {0.0, 1.0}
    assert (ok["score_exact_match"] == (ok["output"] != "I am not sure.").astype(float)).all()
    assert err["score_exact_match"].isna().all() and err["score_token_f1"].isna().all()
    assert df["score_contains"].equals(before.to_pandas()["score_contains"])  # not chosen: untouched
    left = sorted(p.name for p in path.parent.iterdir() if p.name != ".sentech-eval.lock")  # (score held the dir)
    assert left == ["results.parquet"]  # no temp file left


def test_rescore_a_sweep_dir_needs_no_backend_or_key(tmp_path):
    for i, t in enumerate((0.0, 0.7)):
        write_results(tmp_path / "sweep" / str(i) / "results.parquet", results(temperature=t))
    # backend=remote without any key: building a backend would fail, so none is built and nothing is sent
    done = call_cli("score", str(tmp_path / "sweep"), "scorers=[contains]", "backend=remote")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("results.parquet: 24 rows, 22 ok") == 2


def test_user_function_from_the_command_line(tmp_path):
    path = write_results(tmp_path / "results.parquet", results())
    done = call_cli(
        "score", str(path), "+scorers.starts._target_=scorers.plugins.starts_with_reference", env=PLUGINS_ENV
    )
    assert done.returncode == 0, done.stderr
    df = pd.read_parquet(path)
    ok = df[df["status"] == "ok"]
    assert (ok["score_starts"] == (ok["output"] != "I am not sure.").astype(float)).all()


def test_a_crash_while_scoring_leaves_the_old_file_intact(tmp_path):
    path = write_results(tmp_path / "run" / "results.parquet", results())
    original = path.read_bytes()
    done = run_cli(  # a process of its own: the scorer kills it
        "score",
        str(path),
        "scorers=[exact_match]",
        "+scorers.die._target_=scorers.plugins.die_midway",
        "+scorers.die.after=5",
        env=PLUGINS_ENV,
    )
    assert done.returncode == -9  # SIGKILL in the middle of scoring
    assert path.read_bytes() == original
    assert pd.read_parquet(path)["score_exact_match"].eq(0.5).all()


def test_a_scorer_writing_bad_values_fails_cleanly_without_touching_the_file(tmp_path):
    path = write_results(tmp_path / "results.parquet", results())
    original = path.read_bytes()
    done = call_cli("score", str(path), "+scorers.plen._target_=scorers.plugins.PromptLength", env=PLUGINS_ENV)
    assert done.returncode == 0, done.stderr  # sanity: the plug-in works
    path.write_bytes(original)
    done = call_cli(
        "score", str(path), "+scorers.x._target_=scorers.plugins.word_count", "+scorers.x.bogus=1", env=PLUGINS_ENV
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "Scorer 'x'" in done.stderr and "bogus" in done.stderr
    assert path.read_bytes() == original


def test_judge_through_the_cli_against_a_real_server(tmp_path):
    df = make_results(n=6, accuracy=1.0, error_ids={5})
    df.loc[df["status"] == "ok", "output"] = ["Grade: 10", "Grade: 5", "grade: 0", "no idea", "Grade: 99"]
    path = write_results(tmp_path / "results.parquet", df)
    env = {"JUDGE_KEY_FOR_TEST": "jk-55"}
    with running_server(engine="echo", api_key="jk-55") as url:
        done = call_cli(
            "score",
            str(path),
            "scorers=[judge]",
            f"scorers.judge.backend.base_url={url}",
            "scorers.judge.backend.model=grader",
            "scorers.judge.backend.api_key_env=JUDGE_KEY_FOR_TEST",
            "scorers.judge.rubric='{output}'",
            env=env,
        )
    assert done.returncode == 0, done.stderr
    out = pd.read_parquet(path)
    assert out["score_judge"].tolist()[:3] == [1.0, 0.5, 0.0]
    assert out["score_judge"].iloc[3:].isna().all()
    details = out["score_judge_detail"].tolist()
    assert details[3].startswith("judge error: no grade found") and "outside [0, 10]" in details[4]
    assert pd.isna(details[5])  # the errored row was never sent to the judge
    assert (out["score_judge_latency_s"].iloc[:5] > 0).all() and out["score_judge_latency_s"].iloc[5:].isna().all()
    assert out["score_judge_completion_tokens"].iloc[:5].ge(1).all()
    assert "jk-55" not in path.read_bytes().decode("latin-1")


def test_judge_backend_is_its_own_config_node():
    from sentech_eval.commands.score import scoring_spec

    (judge,) = scoring_spec(["backend=local", "scorers=[judge]", "scorers.judge.backend.model=grader"]).scorers
    backend = judge.options["backend"]
    assert backend["kind"] == "remote" and backend["model"] == "grader"  # not the run's backend
    (judge,) = scoring_spec(["scorers=[judge]", "backend@scorers.judge.backend=local"]).scorers
    assert judge.options["backend"]["kind"] == "local"


@pytest.mark.parametrize(
    "args,message",
    [
        (["scorers=[exact_match]"], "does not exist"),
        ([], "No scorers chosen"),
        (["scorers=[exactmatch]"], "Unknown scorer 'exactmatch'; choose one of: code_exec, contains, exact_match"),
        (["scorers=[exact_match]", "backend.api_key=abc"], "Refusing the override 'backend.api_key=…'"),
    ],
)
def test_user_errors_are_one_sentence(tmp_path, args, message):
    target = tmp_path / "missing" if message == "does not exist" else write_results(tmp_path / "r.parquet", results())
    done = call_cli("score", str(target), *args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_help_explains_overrides():
    done = call_cli("score", "--help")
    assert done.returncode == 0
    for text in ("scorers=[exact_match,contains]", "_target_", "atomically", "run dir"):
        assert text in done.stdout
