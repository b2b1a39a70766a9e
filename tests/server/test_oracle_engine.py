"""The oracle engine: right with a known probability of the sampling parameters, through the real server."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest
from server_helpers import SEED_BODY, post

from sentech_eval.server.engines import ChatRequest, OracleEngine, oracle_accuracy, oracle_pass_at_k
from sentech_eval.server.testing import running_server
from sentech_eval.types import Sampling

KEY = "oracle-key"
PROMPTS = [f"Question number {i}?" for i in range(400)]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("oracle-datasets")
    pd.DataFrame(
        {"id": range(len(PROMPTS)), "prompt": PROMPTS, "reference": [f"answer-{i}" for i in range(len(PROMPTS))]}
    ).to_parquet(d / "q.parquet")
    return d


def test_accuracy_formula_peaks_at_its_best_setting():
    best = oracle_accuracy(temperature=0.3, top_p=0.9)
    assert best == pytest.approx(0.8)
    assert oracle_accuracy(temperature=0.3, top_p=1.0) == pytest.approx(0.77)
    assert oracle_accuracy(temperature=1.2, top_p=0.9) < oracle_accuracy(temperature=0.6, top_p=0.9) < best
    assert oracle_accuracy(temperature=0.3, top_p=0.9, frequency_penalty=1.0) == pytest.approx(0.7)
    assert 0.01 <= oracle_accuracy(temperature=2.0, top_p=0.1, presence_penalty=2.0) <= 0.99


def test_hit_rate_matches_the_formula_and_better_settings_dominate(dataset_dir):
    engine = OracleEngine(datasets_dir=dataset_dir)
    asyncio.run(engine.start())

    def right(temperature, top_p, seed=7):
        sampling = Sampling(temperature=temperature, top_p=top_p, seed=seed)
        return [
            engine.answer(ChatRequest(messages=[{"role": "user", "content": p}], sampling=sampling)) == f"answer-{i}"
            for i, p in enumerate(PROMPTS)
        ]

    best, worse = right(0.3, 0.9), right(1.2, 1.0)
    assert sum(best) / len(PROMPTS) == pytest.approx(0.8, abs=0.06)  # 400 draws: sd 0.02
    assert sum(worse) / len(PROMPTS) == pytest.approx(oracle_accuracy(1.2, 1.0), abs=0.07)
    # One draw per (seed, prompt): wherever the worse setting is right, the better one is too.
    assert all(b for b, w in zip(best, worse) if w)
    assert right(0.3, 0.9) == best  # deterministic
    assert right(0.3, 0.9, seed=8) != best  # another seed, other draws


def test_serves_the_reference_or_a_wrong_answer_over_http(dataset_dir):
    with running_server("oracle", api_key=KEY, datasets_dir=dataset_dir, accuracy_peak=0.99) as url:
        answers = []
        for prompt in PROMPTS[:40]:
            body = {**SEED_BODY, "messages": [{"role": "user", "content": prompt}], "temperature": 0.3, "top_p": 0.9}
            reply = post(url, body, key=KEY)
            assert reply.status == 200, reply.text
            answers.append(reply.json()["choices"][0]["message"]["content"])
        unknown = post(url, {**SEED_BODY, "messages": [{"role": "user", "content": "Not in any dataset"}]}, key=KEY)
    assert sum(a == f"answer-{i}" for i, a in enumerate(answers)) >= 36  # p = 0.99
    assert set(answers) <= {f"answer-{i}" for i in range(40)} | {OracleEngine.WRONG_ANSWER}
    assert unknown.json()["choices"][0]["message"]["content"] == OracleEngine.WRONG_ANSWER


def test_bad_accuracy_peak_is_one_sentence():
    from sentech_eval.commands.serve import parse_config
    from sentech_eval.errors import ConfigError

    with pytest.raises(ConfigError, match="--accuracy-peak"):
        parse_config(["--engine", "oracle", "--accuracy-peak", "1.5", "--no-auth"])


def test_code_answers_are_the_canonical_solution_with_the_known_pass_at_k(tmp_path):
    """A dataset with canonical_solution: right = the solution, wrong = a raising body; the share of prompts
    with a right answer among k samples matches oracle_pass_at_k (shared draws at low temperature)."""
    prompts = [f"def f{i}(x):\n    '''Problem {i}.'''\n" for i in range(600)]
    pd.DataFrame(
        {
            "id": range(len(prompts)),
            "prompt": prompts,
            "reference": ["def check(candidate):\n    pass\n"] * len(prompts),
            "canonical_solution": [f"    return {i}\n" for i in range(len(prompts))],
        }
    ).to_parquet(tmp_path / "code.parquet")
    engine = OracleEngine(datasets_dir=tmp_path, accuracy_peak=0.5)
    asyncio.run(engine.start())

    def right(prompt_index: int, temperature: float, seed: int) -> bool:
        sampling = Sampling(temperature=temperature, top_p=0.9, seed=seed)
        request = ChatRequest(messages=[{"role": "user", "content": prompts[prompt_index]}], sampling=sampling)
        answer = engine.answer(request)
        assert answer in (f"    return {prompt_index}\n", OracleEngine.WRONG_CODE)
        return answer == f"    return {prompt_index}\n"

    for temperature in (0.0, 0.3, 1.0):
        draws = [[right(i, temperature, seed) for seed in range(5)] for i in range(len(prompts))]
        pass_1 = sum(d[0] for d in draws) / len(prompts)
        pass_5 = sum(any(d) for d in draws) / len(prompts)
        assert pass_1 == pytest.approx(oracle_accuracy(temperature, 0.9, peak=0.5), abs=0.06)  # sd ≤ 0.02
        assert pass_5 == pytest.approx(oracle_pass_at_k(5, temperature, 0.9, peak=0.5), abs=0.06)
        if temperature == 0.0:
            assert all(len(set(d)) == 1 for d in draws)  # greedy: every sample of a prompt agrees
    # the Codex picture in the truth itself: the best temperature rises with k
    grid = [t / 10 for t in range(0, 16)]
    best = {k: max(grid, key=lambda t: oracle_pass_at_k(k, t, 0.9, peak=0.5)) for k in (1, 10, 100)}
    assert best[1] < best[10] <= best[100]
