"""``sentech-eval view [DIR …]``: a local, read-only browser over every run, row and sweep under DIRs.

Prints one line with its URL and serves until Ctrl-C. Loopback by default; another ``--host`` needs
the token the printed URL carries. Its caches live in the user cache dir, never in a run dir.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import webbrowser
from pathlib import Path

from sentech_eval.errors import ConfigError
from sentech_eval.view import memory
from sentech_eval.view.app import Viewer, is_loopback, new_token, start, url_of
from sentech_eval.view.cache import DigestCache, default_cache_dir


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A local, read-only web app over results: every run, sweep, race and load run under DIR "
        "(runs page with scores and 95% CIs; each run's summary, plots and rows, paged and filtered; sweeps with "
        "heatmaps and the Pareto front; paired comparisons with the rows that flipped; a configuration's history). "
        "New and finished runs appear without a restart. Nothing is written into a run dir.",
        epilog=f"The numbers are those of `report` and `compare`. Summaries are cached in {default_cache_dir()} "
        "(keyed by each file's path, size and modification time).",
    )
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="directories to browse (default: results/)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0 = any free port)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1); any non-loopback address requires the token printed in the URL",
    )
    parser.add_argument("--open", action="store_true", help="open the URL in a web browser")
    parser.add_argument("--cache-dir", default=None, help=f"where summaries are cached (default {default_cache_dir()})")
    return parser


def main(argv: list[str], prog: str = "sentech-eval view") -> int:
    """Serve the viewer until Ctrl-C."""
    args = build_parser(prog).parse_args(argv)
    roots = [Path(d) for d in (args.dirs or ["results"])]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise ConfigError(
            f"{missing[0]} is not a directory; pass the directories holding your runs (default: results/)."
        )
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port; choose 0-65535 (0 = any free port).")
    token = None if is_loopback(args.host) else new_token()
    memory.use_system_allocator()  # what a filter or a row view read goes back to the system after it
    viewer = Viewer(roots=[r.absolute() for r in roots], cache=DigestCache(args.cache_dir), token=token)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # `kill`, `timeout`, a service manager: as Ctrl-C
    try:
        asyncio.run(_serve(viewer, args.host, args.port, args.open))
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()  # the worker processes end before the interpreter does (also when the app's cleanup did not run)
    print("sentech-eval view: stopped.", file=sys.stderr)
    return 0


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


async def _serve(viewer: Viewer, host: str, port: int, open_browser: bool) -> None:
    try:
        runner, bound = await start(viewer, host, port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port (0 = any free port)."
        ) from None
    url = url_of(host, bound, viewer.token)
    print(f"sentech-eval view: {url}", flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
