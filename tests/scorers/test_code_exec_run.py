"""End to end: a `sentech-eval run` whose model answers are hostile programs, scored by code_exec.

The real echo server answers each prompt with its reference at temperature 0, so a dataset whose
references are hostile programs makes the "model" send them. Afterwards: the run finished with
every row, each row has its detail word, and nothing escaped — the loopback listener was never
reached, no file appeared outside the sandbox, the key is nowhere, no process is left.
"""

from __future__ import annotations

import os
import socket
import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import TEST_KEY, processes_named, run_cli

from sentech_eval import load_results, sandbox
from sentech_eval.server.testing import running_server

pytestmark = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bubblewrap (bwrap) is not installed")


def hostile_programs(marker: str, port: int) -> dict[str, tuple[str, str]]:
    """name -> (program, the detail word it must get)."""
    name_it = f"open('/proc/self/comm', 'w').write({marker!r})\n"
    return {
        "good": ("assert sum(range(5)) == 10\n", "passed"),
        "fork_bomb": (
            name_it + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            "timeout",
        ),
        "memory_bomb": ("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n", "memory"),
        "infinite_loop": ("while True:\n    pass\n", "timeout"),
        "endless_output": ("while True:\n    print('spam' * 1000)\n", "killed"),
        "detached_child": (
            name_it
            + textwrap.dedent(
                """
                import os, time
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        time.sleep(1000)
                    os._exit(0)
                os.wait()
                assert False, 'the parent leaves, its grandchild stays behind'
                """
            ),
            "failed",
        ),
        "kill_everything": (
            "import os, signal\nfor pid in [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
            "os.kill(-1, signal.SIGKILL)\nassert False\n",
            "killed",  # it kills itself too
        ),
        "steal_key": (
            textwrap.dedent(
                f"""
                import os
                loot = repr(dict(os.environ))
                for path in ['/tmp/{marker}', os.path.expanduser('~/{marker}'), '{Path.home()}/{marker}',
                             '{os.getcwd()}/{marker}']:
                    try:
                        open(path, 'w').write(loot)
                    except OSError:
                        pass
                assert 'SENTECH_API_KEY' in loot, 'no key to steal'
                """
            ),
            "failed",
        ),
        "phone_home": (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'{marker}')\n",
            "failed",
        ),
    }


def test_a_run_of_hostile_answers_finishes_with_every_row_and_nothing_escapes(tmp_path):
    marker = "sx" + uuid.uuid4().hex[:12]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    programs = hostile_programs(marker, port)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pd.DataFrame(
        {
            "id": list(programs),
            "prompt": [f"Write program {name}." for name in programs],
            "reference": [program for program, _ in programs.values()],
        }
    ).to_parquet(data_dir / "hostile.parquet", index=False)
    run_dir = tmp_path / "run"
    try:
        with running_server("echo", api_key=TEST_KEY, datasets_dir=str(data_dir)) as base_url:
            proc = run_cli(
                "run",
                "backend=remote",
                f"backend.base_url={base_url}",
                f"dataset.path={data_dir / 'hostile.parquet'}",
                "sampling.temperature=0",
                "sampling.max_tokens=4000",
                "scorers=[code_exec]",
                "scorers.code_exec.cpu_s=1",
                "scorers.code_exec.wall_s=3",
                "scorers.code_exec.memory_mb=256",
                "scorers.code_exec.processes=32",
                f"hydra.run.dir={run_dir}",
                env={"SENTECH_API_KEY": TEST_KEY},
                cwd=tmp_path,
            )
        assert proc.returncode == 0, proc.stderr[-3000:]
        frame = load_results(run_dir).set_index("prompt_id")
        assert sorted(frame.index) == sorted(programs)  # every row
        assert (frame["status"] == "ok").all()
        for name, (_, word) in programs.items():
            detail = frame.loc[name, "score_code_exec_detail"]
            assert detail.split(":")[0].split("\n")[0] == word, (name, detail)
            assert frame.loc[name, "score_code_exec"] == (1.0 if word == "passed" else 0.0)
        assert frame["score_code_exec_sandbox"].str.startswith("bwrap").all()
        assert "ConnectionRefusedError" in frame.loc["phone_home", "score_code_exec_detail"]
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody knocked
    finally:
        listener.close()
    for place in (Path("/tmp"), Path.home(), tmp_path, Path.cwd()):
        assert not (place / marker).exists(), place
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path
    assert TEST_KEY not in proc.stdout + proc.stderr
    assert processes_named(marker) == []
