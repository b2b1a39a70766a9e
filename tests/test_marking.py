"""The markers come from what a test's code starts (tests/marking.py), however deep the call."""

from __future__ import annotations

import subprocess
import sys

from cli_helpers import call_cli, run_cli
from marking import LLAMA, PROCESS, SERVER, facts_of

from sentech_eval.server.testing import running_server

# The samples below are read, never run. The tests name them as strings: a test that called them (or
# named them in its code) would be classified by what they start.


def facts(*names: str) -> set[str]:
    """The facts of the samples called ``names``."""
    return facts_of([globals()[name] for name in names])


def _runs_the_cli_in_a_process():
    return run_cli("run", "dataset=capitals")


def _runs_the_cli_in_this_process():
    return call_cli("run", "backend=remote", "runner.concurrency=0")


def _runs_the_local_model_in_this_process():
    return call_cli("run", "backend=local", "dataset.limit=1")


def _judges_with_the_local_model():
    return call_cli("compare", "a", "b", "--judge", "backend=local")


def _serves_in_a_thread():
    with running_server(engine="echo", api_key="k") as url:
        return url


def _serves_in_a_process():
    with running_server(engine="echo", api_key="k", subprocess=True) as url:
        return url


def _serves_the_llama_engine():
    with running_server(engine="llama", api_key="k") as url:
        return call_cli("run", f"backend.base_url={url}")


def _calls_a_helper_that_starts_a_process():
    return [_runs_the_cli_in_a_process() for _ in range(2)]


def _starts_python_from_a_lambda():
    return (lambda: subprocess.run([sys.executable, "-c", "pass"]))()


def _imports_subprocess_inside():
    import subprocess as sp

    return sp.run(["true"])


def _makes_a_record_of_a_process():
    return subprocess.CompletedProcess(["sentech-eval"], 0, "", "")


def _scores_code_in_a_sandbox():
    from sentech_eval.scorers import build_scorer

    return build_scorer("code_exec", {"cpu_s": 1})


def _runs_with_the_code_scorer():
    return call_cli("run", "backend=remote", "scorers=[exact_match,code_exec]")


def _imports_its_helper_inside():
    from cli_helpers import run_cli as run

    return run("--help")


class _Server:
    def start(self):
        return _serves_in_a_process()


def _uses_a_class_of_tests():
    return _Server().start()


def test_a_process_is_seen_through_helpers_lambdas_local_imports_and_classes():
    for sample in (
        "_runs_the_cli_in_a_process",
        "_calls_a_helper_that_starts_a_process",
        "_starts_python_from_a_lambda",
        "_imports_its_helper_inside",
        "_imports_subprocess_inside",
        "_scores_code_in_a_sandbox",
        "_runs_with_the_code_scorer",
    ):
        assert facts(sample) == {PROCESS}, sample
    assert facts("_makes_a_record_of_a_process") == set()
    assert facts("_uses_a_class_of_tests") == {PROCESS, SERVER}


def test_the_cli_in_this_process_starts_nothing_unless_it_loads_the_model():
    assert facts("_runs_the_cli_in_this_process") == set()
    assert facts("_runs_the_local_model_in_this_process") == {LLAMA}
    assert facts("_judges_with_the_local_model") == {LLAMA}


def test_a_server_in_a_thread_is_a_server_and_in_a_process_also_a_process():
    assert facts("_serves_in_a_thread") == {SERVER}
    assert facts("_serves_in_a_process") == {SERVER, PROCESS}
    assert facts("_serves_the_llama_engine") == {SERVER, LLAMA}


def test_the_facts_of_several_functions_add_up():
    assert facts("_runs_the_cli_in_this_process", "_serves_in_a_thread") == {SERVER}
    assert facts() == set()


def test_a_test_using_the_echo_server_fixture_is_marked_slow_not_e2e(request, echo_server):
    assert echo_server.startswith("http://127.0.0.1:")
    assert request.node.get_closest_marker("slow") is not None
    assert request.node.get_closest_marker("e2e") is None
    assert request.node.get_closest_marker("local_model") is None


def test_a_test_reading_samples_is_not_marked(request):
    """This module names run_cli and running_server at the top, but its tests only read them."""
    assert [m.name for m in request.node.iter_markers() if m.name in ("e2e", "local_model", "slow")] == []
