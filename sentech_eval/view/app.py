"""The aiohttp app of ``sentech-eval view``: routes, the safety middleware, the worker and the caches.

Pages are rendered by ``view.pages`` from digests (``view.digest``, computed in one worker process so
the server stays small and responsive, cached on disk by ``view.cache``) and from row pages read by
``view.rows`` in a thread. Safety: every response carries a Content-Security-Policy that forbids
inline script; on a non-loopback host every request needs the token (403 without it); run ids that
leave the roots are 404; any error is a page, never the end of the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import multiprocessing
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from sentech_eval.view import pages, worker
from sentech_eval.view.cache import DigestCache, cache_key
from sentech_eval.view.compare_page import compare_page, flip_filter
from sentech_eval.view.discovery import Gone, NotFound, RunDir, discover, job_dirs, resolve
from sentech_eval.view.history_page import history_groups, history_page
from sentech_eval.view.rows import SAMPLING_COLUMNS, RowFilter, RowTable
from sentech_eval.view.sweep_page import sweep_page

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC_FILES = {"view.css": "text/css", "view.js": "text/javascript"}
TOKEN_COOKIE = "sentech_view_token"
DISCOVERY_TTL_S = 2.0
WAIT_S = 3.0  # how long a page waits for a digest before it shows "computing…" and reloads
ROW_TABLES = 8


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class Viewer:
    """The state behind the pages: the roots, the caches and the worker."""

    roots: list[Path]
    cache: DigestCache = field(default_factory=DigestCache)
    token: str | None = None
    executor: concurrent.futures.Executor | None = None
    _retired: list[concurrent.futures.Executor] = field(default_factory=list)  # shut down, maybe still closing
    _runs: tuple[float, list[RunDir]] = (0.0, [])
    _pending: dict[str, asyncio.Future] = field(default_factory=dict)
    _tables: OrderedDict = field(default_factory=OrderedDict)

    # ------------------------------------------------------------------ worker
    def start_worker(self) -> None:
        if self.executor is None:
            # the worker's Arrow allocates from the C allocator from its first buffer on (Arrow's own pool
            # keeps what a digest freed); read by the spawned worker at its start, a user's choice kept
            os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # noqa: SIM112 - Arrow's variable
            self.executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=worker.setup
            )

    def retire_worker(self) -> None:
        """Let the worker process end (it grew large reading a large run); the next digest starts a fresh one."""
        if self.executor is not None:
            self.executor.shutdown(wait=False)
            self._retired.append(self.executor)
            self.executor = None

    def stop(self) -> None:
        """End the worker processes now (a digest in progress is not waited for) and wait until their
        executors are done: one still closing at interpreter exit can make Python's own exit handler print a
        traceback (Python 3.11's ProcessPoolExecutor wakes a manager thread whose pipe is being closed)."""
        executors = [*self._retired, *([self.executor] if self.executor is not None else [])]
        self.executor = None
        self._retired.clear()
        for executor in executors:
            for process in list((getattr(executor, "_processes", None) or {}).values()):
                process.terminate()
            executor.shutdown(wait=True, cancel_futures=True)
        for table in self._tables.values():
            table.close()
        self._tables.clear()

    async def computed(self, key: str, name: str, *args: Any, wait: float = WAIT_S) -> Any | None:
        """The cached value of ``view.digest.<name>(*args)`` under ``key``; computed in the worker when missing.

        Waits at most ``wait`` seconds; None while it is still being computed.
        """
        value = self.cache.get(key)
        if value is not None:
            return value
        future = self._pending.get(key)
        if future is None:
            self.start_worker()
            loop = asyncio.get_running_loop()
            try:
                future = loop.run_in_executor(self.executor, worker.run, name, *args)
            except (concurrent.futures.BrokenExecutor, RuntimeError):  # broken, or shut down a moment ago
                self.executor = None
                self.start_worker()
                future = loop.run_in_executor(self.executor, worker.run, name, *args)
            self._pending[key] = future
            future.add_done_callback(lambda f, key=key: self._finished(key, f))
        if wait <= 0:
            return None
        try:
            await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            return None
        except Exception:  # noqa: BLE001 - reported through the cache entry made in _finished
            pass
        return self.cache.get(key)

    def _finished(self, key: str, future: asyncio.Future) -> None:
        self._pending.pop(key, None)
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            value, rows_read = future.result()
            self.cache.put(key, value)
            if rows_read >= worker.RETIRE_ROWS and not self._pending:
                self.retire_worker()  # its memory goes back to the system with it
            return
        if isinstance(error, concurrent.futures.BrokenExecutor):
            self.executor = None
        # kept in memory only: a later start of the viewer tries again
        self.cache.memory[key] = {
            "status": "damaged",
            "problems": [f"the viewer could not read these results ({type(error).__name__}: {str(error)[:300]})"],
        }

    # ------------------------------------------------------------------ runs
    def runs(self) -> list[RunDir]:
        stamp, found = self._runs
        if time.monotonic() - stamp > DISCOVERY_TTL_S:
            found = discover(self.roots)
            self._runs = (time.monotonic(), found)
        return found

    def forget_runs(self) -> None:
        self._runs = (0.0, [])

    def file_paths(self, run: RunDir) -> list[str]:
        return [f.path for f in run.files]

    async def digest(self, run: RunDir, wait: float = WAIT_S) -> dict | None:
        key = cache_key("run", run.files)
        return await self.computed(key, "run_digest", self.file_paths(run), wait=wait)

    async def extras(self, run: RunDir, digest: dict, wait: float = WAIT_S) -> dict | None:
        key = cache_key("plots", run.files, str(run.path))
        args = (self.file_paths(run), str(run.path), digest.get("summary") or [], digest.get("labels") or [])
        return await self.computed(key, "run_plots", *args, wait=wait)

    def table(self, run: RunDir) -> RowTable:
        key = cache_key("rows", run.files)
        table = self._tables.get(key)
        if table is None:
            table = RowTable(self.file_paths(run))
            self._tables[key] = table
            while len(self._tables) > ROW_TABLES:
                self._tables.popitem(last=False)[1].close()
        else:
            self._tables.move_to_end(key)
        return table

    def lookup(self, run_id: str) -> RunDir:
        return resolve(self.roots, run_id)


# ---------------------------------------------------------------------------------- middleware
VIEWER: web.AppKey = web.AppKey("viewer", object)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


@web.middleware
async def safety(request: web.Request, handler) -> web.StreamResponse:
    """The token (non-loopback hosts), the security headers and errors as pages."""
    viewer: Viewer = request.app[VIEWER]
    set_cookie = False
    if not viewer.token and not is_loopback(request.url.host or ""):
        # loopback without a token: a page of another site that points a name at 127.0.0.1 (DNS
        # rebinding) arrives with its own name in Host; only loopback names are served
        return web.Response(text="403: this viewer answers only to 127.0.0.1, ::1 or localhost.", status=403)
    if viewer.token:
        given = request.query.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not secrets.compare_digest(given.encode(), viewer.token.encode()):
            response: web.StreamResponse = web.Response(
                text="403: this viewer needs its token; open the URL it printed.", status=403
            )
            response.headers["Content-Security-Policy"] = CSP
            return response
        set_cookie = "token" in request.query
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            response = _html(pages.not_found_page(), 404)
        else:
            raise
    except Gone as exc:
        response = _html(pages.gone_page(str(exc.path)), 404)
    except NotFound:
        response = _html(pages.not_found_page(), 404)
    except Exception as exc:  # noqa: BLE001 - the server never stops for one request
        response = _html(pages.error_page(f"{type(exc).__name__}: {exc}"), 500)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    if set_cookie:
        response.set_cookie(TOKEN_COOKIE, viewer.token, httponly=True, samesite="Strict")
    return response


# ---------------------------------------------------------------------------------- handlers
async def runs_handler(request: web.Request) -> web.Response:
    viewer: Viewer = request.app[VIEWER]
    runs = viewer.runs()
    listed = []
    for run in runs:
        listed.append((run, await viewer.digest(run, wait=0)))
    return _html(pages.runs_page(listed, [str(r) for r in viewer.roots], request.query.get("q", "")[:200]))


def _int(value: str | None, default: int | None = None) -> int | None:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def parse_filter(query, columns: list[str]) -> RowFilter:
    """The rows filter of a run page's query string (unknown values are ignored)."""
    status = query.get("status", "")
    score = query.get("score", "")
    outcome = query.get("outcome", "")
    sampling = []
    for column in SAMPLING_COLUMNS:
        raw = query.get(column, "")
        if raw and column in columns:
            try:
                sampling.append((column, float(raw)))
            except ValueError:
                pass
    return RowFilter(
        status=status if status in ("ok", "error") else "",
        score=score if score.startswith("score_") and score in columns else "",
        outcome=outcome if outcome in ("pass", "fail", "missing") else "",
        repeat=_int(query.get("repeat")),
        config_id=query.get("config", "")[:200],
        sampling=tuple(sampling),
        text=query.get("q", "")[:200],
    )


ROW_COLUMNS = ("prompt_id", "repeat", "status", "latency_s", "output", "error")


async def run_handler(request: web.Request) -> web.Response:
    viewer: Viewer = request.app[VIEWER]
    run = viewer.lookup(request.match_info["run_id"])
    digest = await viewer.digest(run)
    extras = await viewer.extras(run, digest) if digest and digest.get("status") == "ok" else None
    table = viewer.table(run)
    flt = parse_filter(request.query, table.columns)
    offset = max(0, _int(request.query.get("offset"), 0) or 0)
    if digest and digest.get("status") == "foreign":
        columns = table.columns
        flt = RowFilter()  # not sentech-eval results: shown as they are, unfiltered
    else:
        scores = [c for c in table.columns if c.startswith("score_") and not c.endswith("_detail")]
        columns = [c for c in ROW_COLUMNS + SAMPLING_COLUMNS if c in table.columns] + scores
    total, rows = await asyncio.to_thread(table.page, flt, offset, pages.PAGE_SIZE, columns)
    problems = list(table.problems) + list((digest or {}).get("problems", []))
    html = pages.run_page(
        run,
        digest,
        extras,
        flt,
        total,
        offset if total is None else min(offset, max(0, total - 1)),
        rows,
        table.columns,
        list(dict.fromkeys(problems)),
    )
    return _html(html)


async def row_handler(request: web.Request) -> web.Response:
    viewer: Viewer = request.app[VIEWER]
    run = viewer.lookup(request.match_info["run_id"])
    table = viewer.table(run)
    number = _int(request.query.get("n"), 0) or 0
    row = await asyncio.to_thread(table.row, number)
    return _html(pages.row_page(run, row, number, table.total, table.problems))


async def sweep_handler(request: web.Request) -> web.Response:
    viewer: Viewer = request.app[VIEWER]
    run = viewer.lookup(request.match_info["run_id"])
    digest = await viewer.digest(run) if run.files else {"status": "empty"}
    extras = await viewer.extras(run, digest) if digest and digest.get("status") == "ok" else None
    picked = None
    if digest and digest.get("status") == "ok":
        scores = digest.get("scores") or []
        swept = digest.get("swept") or []
        score = request.query.get("score", scores[0] if scores else "")
        score = score if score in scores else (scores[0] if scores else "")
        x = request.query.get("x", swept[0] if swept else "")
        y = request.query.get("y", swept[1] if len(swept) > 1 else "")
        x = x if x in swept else ""
        y = y if y in swept else ""
        if score:
            key = cache_key("sweep", run.files, score, x, y)
            result = await viewer.computed(key, "sweep_extras", digest["summary"], digest["labels"], score, x, y)
            picked = {"score": score, "x": x, "y": y, "result": result}
    jobs = job_dirs(run, viewer.roots)
    return _html(sweep_page(run, digest, extras, picked, jobs))


async def compare_handler(request: web.Request) -> web.Response:
    viewer: Viewer = request.app[VIEWER]
    chosen = request.query.getall("run", [])
    a_id = request.query.get("a") or (chosen[0] if chosen else "")
    b_id = request.query.get("b") or (chosen[1] if len(chosen) > 1 else "")
    if not a_id or not b_id:
        return _html(
            pages.page(
                "Compare",
                '<p class="problem" id="compare-missing">Pick two runs on the '
                '<a href="/">runs page</a> (tick two boxes) to compare them.</p>',
            ),
            400,
        )
    a, b = viewer.lookup(a_id), viewer.lookup(b_id)
    ca, cb = request.query.get("ca", "")[:200], request.query.get("cb", "")[:200]
    key = cache_key("compare", a.files, ca, b.files, cb)
    result = await viewer.computed(
        key, "compare_digest", viewer.file_paths(a), ca or None, viewer.file_paths(b), cb or None
    )
    others = [viewer.lookup(r) for r in chosen[2:]] if len(chosen) > 2 else []
    flt = flip_filter(request.query)
    offset = max(0, _int(request.query.get("offset"), 0) or 0)
    return _html(compare_page(a, ca, b, cb, result, flt, offset, others))


async def history_handler(request: web.Request) -> web.Response:
    viewer: Viewer = request.app[VIEWER]
    listed = [(run, await viewer.digest(run, wait=0)) for run in viewer.runs()]
    groups = history_groups(listed)
    group = request.query.get("group", "")
    score = request.query.get("score", "")
    plot = None
    chosen = groups.get(group)
    if chosen:
        scores = chosen["scores"]
        score = score if score in scores else (scores[0] if scores else "")
        if score:
            points = [
                {
                    "started_at": p["started_at"],
                    "mean": p["row"].get(f"{score}_mean"),
                    "ci_low": p["row"].get(f"{score}_ci_low"),
                    "ci_high": p["row"].get(f"{score}_ci_high"),
                    "latency_s_p50": p["row"].get("latency_s_p50"),
                }
                for p in chosen["points"]
            ]
            plot = await viewer.computed(cache_key("history", points, score), "history_plot", points, score)
    pending = any(d is None for _, d in listed)
    return _html(history_page(groups, group, score, plot, pending))


async def static_handler(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    body = resources.files("sentech_eval.view").joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=STATIC_FILES[name], headers={"Cache-Control": "max-age=300"})


def make_app(viewer: Viewer) -> web.Application:
    """The viewer's aiohttp application (read-only: every route is a GET)."""
    app = web.Application(middlewares=[safety])
    app[VIEWER] = viewer
    app.router.add_get("/", runs_handler)
    app.router.add_get("/run/{run_id:.*}", run_handler)
    app.router.add_get("/row/{run_id:.*}", row_handler)
    app.router.add_get("/sweep/{run_id:.*}", sweep_handler)
    app.router.add_get("/compare", compare_handler)
    app.router.add_get("/history", history_handler)
    app.router.add_get("/static/{name}", static_handler)

    async def on_cleanup(_app: web.Application) -> None:
        viewer.stop()

    app.on_cleanup.append(on_cleanup)
    return app


async def start(viewer: Viewer, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving on ``host``:``port`` (0 = any free port); returns the runner and the port bound."""
    runner = web.AppRunner(make_app(viewer), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp exposes the port only here
    return runner, bound


def url_of(host: str, port: int, token: str | None) -> str:
    """The URL the command prints (the token in it when one is needed)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
