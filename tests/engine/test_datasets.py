"""datasets.py: schema checks name file, column and row; batched reading, limit and shards."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import REPO_ROOT

from sentech_eval.engine.datasets import Dataset
from sentech_eval.errors import DatasetError


def write(tmp_path, frame: pd.DataFrame, name="d.parquet"):
    path = tmp_path / name
    frame.to_parquet(path, index=False)
    return path


def test_prompt_form_builds_system_and_user_messages(tmp_path):
    path = write(
        tmp_path,
        pd.DataFrame(
            {"id": [1, 2], "prompt": ["a?", "b?"], "system": ["S", None], "reference": ["A", "B"], "topic": ["x", "y"]}
        ),
    )
    prompts = list(Dataset(path))
    assert prompts[0].messages == ({"role": "system", "content": "S"}, {"role": "user", "content": "a?"})
    assert prompts[1].messages == ({"role": "user", "content": "b?"},)
    assert prompts[0].reference == "A" and prompts[1].extra == {"topic": "y"}


def test_messages_form_is_read_as_is(tmp_path):
    msgs = [[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]]
    path = write(tmp_path, pd.DataFrame({"id": ["x"], "messages": msgs}))
    (prompt,) = list(Dataset(path))
    assert prompt.messages == ({"role": "system", "content": "s"}, {"role": "user", "content": "hi"})
    assert prompt.reference is None


def test_limit_and_shards_partition_the_rows_exactly_once(tmp_path):
    path = write(tmp_path, pd.DataFrame({"id": range(103), "prompt": [f"q{i}" for i in range(103)]}))
    limited = [p.id for p in Dataset(path, limit=50, batch_size=7)]
    assert limited == list(range(50))
    shards = [[p.id for p in Dataset(path, limit=50, num_shards=4, shard_index=i, batch_size=7)] for i in range(4)]
    assert sorted(sum(shards, [])) == list(range(50))
    assert [Dataset(path, limit=50, num_shards=4, shard_index=i).info().num_rows for i in range(4)] == [
        len(s) for s in shards
    ]


def test_batches_do_not_load_everything_at_once(tmp_path):
    path = write(tmp_path, pd.DataFrame({"id": range(1000), "prompt": ["q"] * 1000}))
    batches = list(Dataset(path, batch_size=100).iter_prompt_batches())
    assert len(batches) == 10 and all(len(b) == 100 for b in batches)


@pytest.mark.parametrize(
    "frame,fragment",
    [
        (pd.DataFrame({"prompt": ["a"]}), "column 'id', the schema: missing"),
        (pd.DataFrame({"id": [1.5], "prompt": ["a"]}), "column 'id', the schema: has type double"),
        (pd.DataFrame({"id": [1]}), "column 'messages', the schema: missing"),
        (pd.DataFrame({"id": [1], "prompt": [3]}), "column 'prompt', the schema: has type int64"),
        (pd.DataFrame({"id": [1, 2, 1], "prompt": ["a", "b", "c"]}), "column 'id', row 2: duplicate id 1"),
        (pd.DataFrame({"id": [1, 2], "prompt": ["a", "  "]}), "column 'prompt', row 1: is empty"),
        (pd.DataFrame({"id": [1, 2], "prompt": ["a", None]}), "column 'prompt', row 1: is empty"),
        (
            pd.DataFrame({"id": [1], "messages": [[{"role": "robot", "content": "x"}]]}),
            "column 'messages', row 0: has role 'robot'",
        ),
        (
            pd.DataFrame(
                {"id": [1, 2], "messages": [[{"role": "user", "content": "x"}], [{"role": "user", "content": ""}]]}
            ),
            "column 'messages', row 1: has a message with empty content",
        ),
        (pd.DataFrame({"id": [1, 2], "messages": [[{"role": "user", "content": "x"}], []]}), "row 1: is an empty list"),
    ],
)
def test_bad_datasets_name_file_column_and_row(tmp_path, frame, fragment):
    path = write(tmp_path, frame)
    with pytest.raises(DatasetError) as info:
        Dataset(path)
    message = str(info.value)
    assert str(path) in message and fragment in message
    assert "\n" not in message


def test_empty_missing_and_non_parquet_files(tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "prompt": pa.array([], pa.string())}), empty)
    with pytest.raises(DatasetError, match="has no rows"):
        Dataset(empty)
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset(tmp_path / "nope.parquet")
    text = tmp_path / "data.parquet"
    text.write_text("id,prompt\n1,hi\n")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        Dataset(text)


def test_shipped_datasets_are_valid_and_regenerate_identically(tmp_path):
    capitals = Dataset(REPO_ROOT / "datasets" / "capitals.parquet")
    arithmetic = Dataset(REPO_ROOT / "datasets" / "arithmetic.parquet")
    assert capitals.info().num_rows >= 100 and arithmetic.info().num_rows >= 100
    france = [p for p in capitals if p.messages[-1]["content"] == "What is the capital of France?"]
    assert france and france[0].reference == "Paris"
    for p in arithmetic:
        a, op, b = p.messages[-1]["content"].removeprefix("What is ").removesuffix("?").split()
        assert str(eval(f"{a}{op}{b}")) == p.reference  # noqa: S307 - our own generated digits
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_datasets", REPO_ROOT / "scripts" / "make_datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pd.testing.assert_frame_equal(
        module.capitals(), pd.read_parquet(REPO_ROOT / "datasets" / "capitals.parquet"), check_dtype=False
    )
    pd.testing.assert_frame_equal(
        module.arithmetic(), pd.read_parquet(REPO_ROOT / "datasets" / "arithmetic.parquet"), check_dtype=False
    )


def test_jsonl_and_csv_are_read_directly_with_mapped_columns(tmp_path):
    """Own data in JSON Lines or CSV, columns named otherwise: mapped, not renamed, not converted."""
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        '{"qid": 1, "question": "What is 2+2?", "answer": 4, "topic": "math"}\n'
        '{"qid": 2, "question": "What is 3+4?", "answer": 7, "topic": "geo"}\n'
    )
    csv = tmp_path / "q.csv"
    csv.write_text("qid,question,answer,topic\n1,What is 2+2?,4,math\n2,What is 3+4?,7,geo\n")
    mapping = {"id": "qid", "prompt": "question", "reference": "answer"}
    for path in (jsonl, csv):
        dataset = Dataset(path, columns=mapping)
        prompts = list(dataset)
        assert [p.id for p in prompts] == [1, 2], path
        assert prompts[0].messages == ({"role": "user", "content": "What is 2+2?"},)
        assert [p.reference for p in prompts] == ["4", "7"], path  # numeric answers are read as text
        assert prompts[1].extra == {"topic": "geo"}
        assert dataset.info().num_rows == 2


def test_mapping_problems_name_the_key_and_the_file_columns(tmp_path):
    csv = tmp_path / "q.csv"
    csv.write_text("qid,question\n1,hi\n")
    with pytest.raises(
        DatasetError,
        match=r"dataset.columns.prompt='prompt_text' names no column of the file; "
        r"its columns are: qid, question",
    ):
        Dataset(csv, columns={"id": "qid", "prompt": "prompt_text"})
    with pytest.raises(DatasetError, match=r"dataset.columns.query is not a dataset column"):
        Dataset(csv, columns={"query": "question"})
    with pytest.raises(DatasetError, match=r"column 'id', the schema: missing; .*dataset.columns.id=NAME"):
        Dataset(csv, columns={"prompt": "question"})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": \n')
    with pytest.raises(DatasetError, match=r"broken.jsonl is not valid JSON Lines"):
        Dataset(broken)


def test_mapping_works_on_parquet_too(tmp_path):
    path = write(tmp_path, pd.DataFrame({"key": ["a", "b"], "q": ["x?", "y?"], "prompt": ["ignored", "ignored"]}))
    prompts = list(Dataset(path, columns={"id": "key", "prompt": "q"}, batch_size=1))
    assert [(p.id, p.messages[-1]["content"]) for p in prompts] == [("a", "x?"), ("b", "y?")]


def test_shuffle_is_seeded_and_a_larger_limit_extends_a_smaller_one(tmp_path, monkeypatch):
    import sentech_eval.engine.datasets as datasets_module

    monkeypatch.setattr(datasets_module, "SHUFFLE_WINDOW", 7)  # several passes over the file
    path = tmp_path / "d.parquet"
    pd.DataFrame(
        {"id": range(50), "prompt": [f"p{i}" for i in range(50)], "reference": [str(i) for i in range(50)]}
    ).to_parquet(path, row_group_size=8)

    def ids(**kw):
        return [p.id for p in Dataset(path, batch_size=5, **kw)]

    full = ids(shuffle_seed=3)
    assert sorted(full) == list(range(50)) and full != list(range(50))
    assert ids(shuffle_seed=3) == full and ids(shuffle_seed=4) != full
    assert ids(shuffle_seed=3, limit=20) == full[:20]
    assert Dataset(path, shuffle_seed=3, limit=20).info().num_rows == 20
    assert Dataset(path, shuffle_seed=3, limit=20).prompt_ids() == full[:20]
    shards = [ids(shuffle_seed=3, num_shards=2, shard_index=i) for i in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(50))
    prompt = next(iter(Dataset(path, shuffle_seed=3)))
    assert prompt.reference == str(prompt.id) and prompt.messages[-1]["content"] == f"p{prompt.id}"


def test_a_pandas_category_column_is_read_as_its_values(tmp_path):
    """A dictionary-encoded column (pandas ``category``) is decoded: ids, prompts, references and extras."""
    frame = pd.DataFrame({"id": ["a", "b", "a2"], "prompt": ["p1", "p2", "p1"], "reference": ["r", "r", "s"]})
    frame["group"] = ["g1", "g2", "g1"]
    for column in frame.columns:
        frame[column] = frame[column].astype("category")
    path = tmp_path / "cat.parquet"
    frame.to_parquet(path)
    assert pa.types.is_dictionary(pq.read_schema(path).field("prompt").type)
    dataset = Dataset(path)
    prompts = list(dataset)
    assert [p.id for p in prompts] == ["a", "b", "a2"]
    assert [p.reference for p in prompts] == ["r", "r", "s"]
    assert [p.messages[-1]["content"] for p in prompts] == ["p1", "p2", "p1"]
    extra = {f.name: f.type for f in dataset.info().extra_fields}
    assert extra.get("group") == pa.string()
