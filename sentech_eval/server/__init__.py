"""The Sentech-compatible server behind `sentech-eval serve`.

- ``app``      the HTTP contract (routes, auth, validation, JSON and SSE responses)
- ``engines``  what answers: ``echo`` (deterministic, no model) and ``llama`` (GGUF via llama.cpp)
- ``faults``   seeded fault injection (errors, dropped connections, slow answers)
- ``serving``  ServeConfig (checked; the flags are parsed in commands/serve.py) and the serving loop, one or several workers
- ``testing``  ``running_server(...)``: a real server on a free loopback port for tests and benchmarks
"""

from sentech_eval.server.app import ServerOptions, create_app
from sentech_eval.server.testing import running_server

__all__ = ["ServerOptions", "create_app", "running_server"]
