"""summary._config_parts: the configurations' rows in groupby's order, without copying the frame first."""

import numpy as np
import pandas as pd

from sentech_eval.analysis.summary import _config_parts


def test_config_parts_equal_the_groupby_parts_in_order_missing_keys_included():
    rng = np.random.default_rng(3)
    n = 500
    df = pd.DataFrame(
        {
            "config_id": pd.array(rng.choice(["c2", "c0", "c1", None], n), dtype="string[pyarrow]"),
            "dataset": rng.choice(["d1", "d0"], n),
            "latency_s": rng.random(n),
        },
        index=rng.permutation(n) + 1000,
    )
    keys = ["config_id", "dataset"]
    expected = [part for _, part in df.groupby(keys, dropna=False, sort=False)]
    got = list(_config_parts(df, keys))
    assert len(got) == len(expected) == 8
    for a, b in zip(got, expected):
        pd.testing.assert_frame_equal(a, b)


def test_config_parts_without_keys_is_the_frame():
    df = pd.DataFrame({"latency_s": [0.1, 0.2]})
    assert [len(p) for p in _config_parts(df, [])] == [2]
