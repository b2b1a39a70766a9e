"""Run an untrusted Python program in a throw-away sandbox with resource limits.

Model-written code is hostile input. ``Sandbox.run(program, limits)`` runs it under bubblewrap
(``bwrap``; Debian package ``bubblewrap``) and returns an ``ExecResult``; nothing of it outlives
the call. Each run gets:

- its own user, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``): no network (a
  loopback of its own, nothing listening), no view of or signal to processes outside it; no
  nested user namespaces (``--disable-userns``);
- a read-only view of the system directories (/usr, /etc and the /bin, /lib links: not /root,
  /home, /run, the host's /tmp or the working directory), a read-only root, and a private
  writable ``/tmp`` of ``tmp_mb`` (also its ``HOME`` and working directory);
- a real unprivileged uid (65534) when the caller is root, set *before* bwrap starts: inside
  bwrap's user namespace root's processes would not count against ``RLIMIT_NPROC``;
- an environment of its own (``PATH``, ``HOME``, ``LANG``): nothing of the caller's, no API key;
  stdin at end of file (``/dev/null``); stdout and stderr read as they come, the last
  ``output_kb`` of each kept, the sandbox killed once both together pass ``max_output_mb``;
- rlimits set inside before the program starts, each clamped to the hard limit the host allows
  (a container that caps one lower is never an error): CPU seconds (``RLIMIT_CPU``), address
  space (``RLIMIT_AS``), processes (``RLIMIT_NPROC``, counted per sandbox: each has its own user
  namespace), file size, open files, no core dumps; and a wall-clock limit kept by the caller;
- teardown: bwrap runs the program under its own PID 1 with ``--die-with-parent``; when the
  program ends, times out or is killed, that PID 1 goes and the kernel kills everything left in
  the namespace, however it detached (a new session, a double fork). If the caller dies, bwrap
  and its sandbox die with it.

The program is handed in on stdin (with a one-run nonce) to a small bootstrap that sets the
limits, compiles the program (a ``SyntaxError`` is reported as such), runs it, and reports on a
private pipe how it ended: completed (with the nonce), an exception (its type), or nothing (it
exited or was killed). Without bwrap, ``Sandbox(allow_unsandboxed=True)`` runs the same
bootstrap directly with the same rlimits, a cleared environment and a temporary working
directory, but nothing else of the above (a detached child can survive); ``ExecResult.sandbox``
says which one ran.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sentech_eval.errors import ConfigError

NOBODY = 65534  # the unprivileged uid/gid a root caller drops to before bwrap
DEFAULT_BWRAP = "/usr/bin/bwrap"
DEFAULT_PYTHON = "/usr/bin/python3"
# Read-only inside the sandbox: the system, nothing of users (home dirs, /root, /run, /tmp, /work ...).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}

# How a run ended (ExecResult.status).
COMPLETED = "completed"  # the program ran to its end
EXCEPTION = "exception"  # it raised (ExecResult.exception names the type)
SYNTAX = "syntax"  # it does not compile
TIMEOUT = "timeout"  # CPU-time or wall-clock limit
MEMORY = "memory"  # MemoryError under the address-space limit
KILLED = "killed"  # a signal, or too much output
EXITED = "exited"  # it left before its end (os._exit, a crash of the interpreter ...)
ERROR = "error"  # the sandbox itself failed to start


@dataclass(frozen=True)
class Limits:
    """What one run may use. Times in seconds, sizes as named; every rlimit is clamped to the host's hard limit."""

    cpu_s: float = 10.0  # CPU seconds of each process (RLIMIT_CPU)
    wall_s: float | None = None  # wall-clock limit of the whole run; None: 3 × cpu_s
    memory_mb: int = 1024  # address space of each process (RLIMIT_AS)
    processes: int = 64  # processes and threads of the sandbox's user (RLIMIT_NPROC)
    file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    tmp_mb: int = 64  # size of the private /tmp
    open_files: int = 256  # RLIMIT_NOFILE
    output_kb: int = 64  # kept of stdout and of stderr (the end of each)
    max_output_mb: float = 8.0  # more output than this (both streams): the run is killed

    def __post_init__(self) -> None:
        for name in ("cpu_s", "memory_mb", "processes", "file_mb", "tmp_mb", "open_files", "output_kb"):
            if not getattr(self, name) or getattr(self, name) <= 0:
                raise ConfigError(f"Sandbox limit {name} must be a positive number, not {getattr(self, name)!r}.")
        if self.wall_s is not None and self.wall_s <= 0:
            raise ConfigError(f"Sandbox limit wall_s must be a positive number or null, not {self.wall_s!r}.")
        if self.max_output_mb <= 0:
            raise ConfigError(f"Sandbox limit max_output_mb must be positive, not {self.max_output_mb!r}.")

    @property
    def wall_limit_s(self) -> float:
        """The wall-clock limit in seconds (``wall_s``, or three times the CPU limit)."""
        return float(self.wall_s) if self.wall_s is not None else 3.0 * float(self.cpu_s)

    def rlimits(self) -> dict[str, int]:
        """The rlimits the bootstrap sets (name -> value; CPU gets a hard limit one second above)."""
        mb = 1024 * 1024
        return {
            "RLIMIT_CPU": max(1, int(-(-float(self.cpu_s) // 1))),
            "RLIMIT_AS": int(self.memory_mb) * mb,
            "RLIMIT_NPROC": int(self.processes),
            "RLIMIT_FSIZE": int(self.file_mb) * mb,
            "RLIMIT_NOFILE": int(self.open_files),
            "RLIMIT_CORE": 0,
        }


@dataclass
class ExecResult:
    """How one sandboxed run ended, with what it printed and what it used."""

    status: str  # COMPLETED, EXCEPTION, SYNTAX, TIMEOUT, MEMORY, KILLED, EXITED or ERROR
    reason: str = ""  # one short phrase for every status but COMPLETED
    exception: str | None = None  # the exception type that ended the program
    exit_code: int | None = None
    stdout: str = ""  # the last Limits.output_kb of each stream
    stderr: str = ""
    cpu_s: float | None = None  # CPU time of every process of the run
    wall_s: float = 0.0
    sandbox: str = ""  # "bwrap 0.8.0" or "none"
    limits: dict[str, int] = field(default_factory=dict)  # the rlimits in force (after clamping)

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (for JSON, benchmarks)."""
        return asdict(self)


# Runs inside the sandbox as `python3 -I -c BOOTSTRAP STATUS_FD`; its input is one JSON object on stdin.
BOOTSTRAP = r"""
import json, os, resource, sys, traceback
status = os.fdopen(int(sys.argv[1]), "w", buffering=1)
job = json.loads(sys.stdin.buffer.read())
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
applied = {}
for name, value in job["limits"].items():
    which = getattr(resource, name)
    soft, hard = resource.getrlimit(which)
    top = value + 1 if name == "RLIMIT_CPU" else value
    if hard != resource.RLIM_INFINITY:
        value, top = min(value, hard), min(top, hard)
    resource.setrlimit(which, (value, top))
    applied[name] = value
status.write("limits " + json.dumps(applied) + "\n")
nonce = job.pop("nonce")
try:
    code = compile(job.pop("program"), "program.py", "exec")
except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
    traceback.print_exception(type(exc), exc, None)
    status.write("syntax " + type(exc).__name__ + "\n")
    sys.exit(1)
status.write("start\n")


def cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


scope = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(code, scope)
except BaseException as exc:
    traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # from the program's frame on
    try:
        status.write("cpu %.4f\nexception %s\n" % (cpu(), type(exc).__name__))
    except BaseException:
        pass
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
sys.stderr.flush()
status.write("cpu %.4f\ndone %s\n" % (cpu(), nonce))
os._exit(0)
"""


def find_bwrap(path: str | None = None) -> str | None:
    """The bwrap executable: ``path`` if given (None when it is not there), else /usr/bin/bwrap or bwrap on PATH."""
    if path:
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    if os.path.isfile(DEFAULT_BWRAP) and os.access(DEFAULT_BWRAP, os.X_OK):
        return DEFAULT_BWRAP
    return shutil.which("bwrap")


def default_python() -> str:
    """The interpreter for sandboxed programs: /usr/bin/python3 (readable by any uid), else this one."""
    return DEFAULT_PYTHON if os.path.isfile(DEFAULT_PYTHON) else os.path.realpath(sys.executable)


class Sandbox:
    """Runs programs in bubblewrap (or, only if allowed and bwrap is missing, without a sandbox).

    ``bwrap``: the executable (None: /usr/bin/bwrap or on PATH). ``python``: the interpreter run
    inside (None: /usr/bin/python3). ``allow_unsandboxed``: run without a sandbox when bwrap is
    missing or cannot start; otherwise that is a ``ConfigError``. ``check()`` starts one empty
    program to prove the set-up works before the first real one.
    """

    def __init__(self, bwrap: str | None = None, python: str | None = None, allow_unsandboxed: bool = False) -> None:
        self.python = python or default_python()
        self.allow_unsandboxed = bool(allow_unsandboxed)
        self.bwrap = find_bwrap(bwrap)
        self.bwrap_wanted = bwrap or DEFAULT_BWRAP
        self.uid = NOBODY if os.geteuid() == 0 else None
        self.kind = "bwrap" if self.bwrap else "none"
        self.label = "none"
        self._bwrap_flags: list[str] = []

    # ------------------------------------------------------------------ set-up
    def check(self) -> None:
        """Prove the sandbox starts (one empty program); fall back or raise ``ConfigError`` with one sentence."""
        if not os.path.isfile(self.python):
            raise ConfigError(f"The sandbox's Python interpreter {self.python} does not exist; set python to one.")
        if self.bwrap:
            self._bwrap_flags = self._optional_flags(self.bwrap)
            self.label = self._version(self.bwrap)
            result = self.run("pass", Limits(cpu_s=5, wall_s=30))
            if result.status == COMPLETED:
                return
            problem = (
                f"bubblewrap ({self.bwrap}) cannot start a sandbox here: {_last_line(result.stderr) or result.reason}"
            )
            self.kind, self.label = "none", "none"
        else:
            problem = f"no sandbox tool: bubblewrap is not installed ({self.bwrap_wanted} not found)"
        if not self.allow_unsandboxed:
            raise ConfigError(
                f"Refusing to run model code: {problem}. Install it (Debian/Ubuntu: apt-get install bubblewrap), "
                "or set scorers.<name>.allow_unsandboxed=true to run the code without a sandbox (rows then say "
                "sandbox=none)."
            )
        self.bwrap = None
        result = self.run("pass", Limits(cpu_s=5, wall_s=30))
        if result.status != COMPLETED:
            raise ConfigError(
                f"Cannot run {self.python} even without a sandbox: {_last_line(result.stderr) or result.reason}."
            )

    def _version(self, bwrap: str) -> str:
        try:
            out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return "bwrap"
        return out.strip().replace("bubblewrap", "bwrap") or "bwrap"

    def _optional_flags(self, bwrap: str) -> list[str]:
        """Flags of newer bwrap versions, used when this one has them."""
        try:
            help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [flag for flag in ("--disable-userns", "--size") if flag in help_text]

    def command(self, status_fd: int, limits: Limits, info_fd: int | None = None) -> list[str]:
        """The command line of one run (bwrap and its mounts, then the bootstrap).

        bwrap writes the sandbox's PID 1 (as seen from here) to ``info_fd``: killing it tears the
        whole sandbox down before bwrap exits.
        """
        inner = [self.python, "-I", "-c", BOOTSTRAP, str(status_fd)]
        if not self.bwrap:
            return inner
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv"]
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        if "--disable-userns" in self._bwrap_flags:
            args.append("--disable-userns")
        for key, value in SANDBOX_ENV.items():
            args += ["--setenv", key, value]
        bound = []
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
                bound.append(path)
        prefix = _install_prefix(self.python)
        if prefix and not any(prefix == b or prefix.startswith(b + "/") for b in bound):
            args += ["--ro-bind", prefix, prefix]
        args += ["--proc", "/proc", "--dev", "/dev"]
        size = ["--size", str(int(limits.tmp_mb) * 1024 * 1024)] if "--size" in self._bwrap_flags else []
        if size:  # /dev/shm: a bounded tmpfs of its own (bwrap's /dev is an unbounded one, made read-only below)
            args += size + ["--tmpfs", "/dev/shm"]
        args += size + ["--tmpfs", "/tmp", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
        return args + inner

    # ------------------------------------------------------------------ one run
    def run(self, program: str, limits: Limits | None = None) -> ExecResult:
        """Run ``program`` (Python source) once under ``limits``; blocks until it has exited and everything it
        started has been killed (the kernel may still be finishing a killed process's exit for a few ms)."""
        limits = limits or Limits()
        nonce = secrets.token_hex(16)
        job = json.dumps({"limits": limits.rlimits(), "nonce": nonce, "program": program}).encode()
        status_r, status_w = os.pipe()
        info_r, info_w = os.pipe() if self.bwrap else (None, None)
        passed = (status_w,) if info_w is None else (status_w, info_w)
        workdir = None if self.bwrap else tempfile.mkdtemp(prefix="sentech-exec-")
        env = dict(SANDBOX_ENV)
        if workdir:
            env.update(HOME=workdir, TMPDIR=workdir)
            if self.uid is not None:
                os.chown(workdir, self.uid, self.uid)
        drop: dict[str, Any] = {"user": self.uid, "group": self.uid, "extra_groups": []} if self.uid is not None else {}
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(
                self.command(status_w, limits, info_w),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=passed,
                env={} if self.bwrap else env,
                cwd=workdir or "/",
                start_new_session=True,
                close_fds=True,
                **drop,
            )
        except OSError as exc:
            for fd in (status_r, info_r, *passed):
                if fd is not None:
                    os.close(fd)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            return ExecResult(ERROR, reason=f"could not start: {exc}", sandbox=self.label)
        for fd in passed:
            os.close(fd)
        try:
            io = _Streams(proc, status_r, job, limits, info_r)
            io.pump(started + limits.wall_limit_s)
            if io.over_output or io.timed_out:
                _tear_down(proc, io.sandbox_pid())
            exit_code = proc.wait()
            if not self.bwrap:
                _kill_group(proc.pid)  # what is left of its process group (a detached child escapes)
            io.drain()
        finally:
            for fd in (status_r, info_r):
                if fd is not None:
                    os.close(fd)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if pipe:
                        pipe.close()
                except OSError:
                    pass
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        result = ExecResult(
            status=COMPLETED,
            exit_code=exit_code,
            stdout=io.text(io.stdout),
            stderr=io.text(io.stderr),
            cpu_s=io.cpu_s,
            wall_s=time.perf_counter() - started,
            sandbox=self.label if self.bwrap else "none",
            limits=io.limits,
        )
        _classify(result, io, nonce, limits, sandboxed=bool(self.bwrap))
        return result


def _install_prefix(python: str) -> str | None:
    """The directory tree an interpreter outside /usr lives in (bound read-only so it can start)."""
    real = os.path.realpath(python)
    parent = os.path.dirname(os.path.dirname(real))
    return parent if parent not in ("/", "") else None


class _Streams:
    """Feeds the job to stdin and reads stdout, stderr and the status pipe until they close or time runs out."""

    def __init__(
        self, proc: subprocess.Popen[bytes], status_fd: int, job: bytes, limits: Limits, info_fd: int | None = None
    ) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # all three PIPE
        self.proc = proc
        self.stdin = proc.stdin
        self.keep = int(limits.output_kb) * 1024
        self.max_total = int(float(limits.max_output_mb) * 1024 * 1024)
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.status = bytearray()
        self.info = bytearray()  # bwrap's --info-fd JSON (the sandbox's PID 1)
        self.total = 0
        self.job = memoryview(job)
        self.status_fd = status_fd
        self.timed_out = False
        self.over_output = False
        self.limits: dict[str, int] = {}
        self.cpu_s: float | None = None  # as the bootstrap reports it (None when the program did not get there)
        self.selector = selectors.DefaultSelector()
        for stream in (proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
            self.selector.register(stream.fileno(), selectors.EVENT_READ)
        os.set_blocking(status_fd, False)
        self.selector.register(status_fd, selectors.EVENT_READ)
        self.stdin_fd = self.stdin.fileno()
        os.set_blocking(self.stdin_fd, False)
        self.selector.register(self.stdin_fd, selectors.EVENT_WRITE)
        self.sinks = {proc.stdout.fileno(): self.stdout, proc.stderr.fileno(): self.stderr, status_fd: self.status}
        if info_fd is not None:
            os.set_blocking(info_fd, False)
            self.selector.register(info_fd, selectors.EVENT_READ)
            self.sinks[info_fd] = self.info

    def pump(self, deadline: float) -> None:
        """Until every output closes (everything inside has exited), the deadline or the output cap."""
        try:
            while self.selector.get_map():
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.timed_out = True
                    return
                for key, _ in self.selector.select(timeout=min(left, 1.0)):
                    if key.fd == self.stdin_fd:
                        self._feed()
                    else:
                        self._read(key.fd)
                    if self.total > self.max_total:
                        self.over_output = True
                        return
        finally:
            self.selector.close()

    def drain(self) -> None:
        """Read what is left in the status pipe after the run (the process is gone)."""
        try:
            while chunk := os.read(self.status_fd, 65536):
                self.status += chunk
        except (BlockingIOError, OSError):
            pass
        self._parse_limits()

    def _feed(self) -> None:
        fd = self.stdin_fd
        try:
            sent = os.write(fd, self.job[:65536])
        except (BrokenPipeError, OSError):
            sent = len(self.job)
        self.job = self.job[sent:]
        if not self.job:
            self.selector.unregister(fd)
            self.stdin.close()

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.selector.unregister(fd)
            return
        sink = self.sinks[fd]
        sink += chunk
        if sink is self.stdout or sink is self.stderr:
            self.total += len(chunk)
            if len(sink) > self.keep:
                del sink[: len(sink) - self.keep]
        elif len(sink) > 65536:  # the program may write junk to the status pipe: keep it bounded
            del sink[4096:-4096]

    def sandbox_pid(self) -> int | None:
        """The sandbox's PID 1 as bwrap reported it (None before bwrap got that far, or without bwrap)."""
        match = re.search(rb'"child-pid"\s*:\s*(\d+)', bytes(self.info))
        return int(match.group(1)) if match else None

    def _parse_limits(self) -> None:
        for line in self.lines():
            if line.startswith("limits ") and not self.limits:
                try:
                    self.limits = {k: int(v) for k, v in json.loads(line[7:]).items()}
                except (ValueError, TypeError, AttributeError):
                    self.limits = {}
            elif line.startswith("cpu "):
                try:
                    self.cpu_s = float(line[4:])
                except ValueError:
                    pass

    def lines(self) -> list[str]:
        return self.status.decode("utf-8", "replace").splitlines()

    @staticmethod
    def text(buffer: bytearray) -> str:
        return bytes(buffer).decode("utf-8", "replace")


def _kill_group(pid: int) -> None:
    """SIGKILL the run's process group (bwrap outside; its sandbox goes with it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tear_down(proc: subprocess.Popen[bytes], sandbox_pid: int | None) -> None:
    """Kill a run now. With bwrap: SIGKILL the sandbox's PID 1, whose exit kills and reaps everything in
    its namespace before bwrap sees it go, so nothing is left when bwrap exits; bwrap itself if that fails."""
    if sandbox_pid is not None:
        try:
            os.kill(sandbox_pid, signal.SIGKILL)
            proc.wait(timeout=10)
            return
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass
    _kill_group(proc.pid)


def _signal_of(exit_code: int | None, sandboxed: bool) -> int | None:
    """The signal that ended the program: negative exit codes directly, 128 + n through bwrap."""
    if exit_code is None:
        return None
    if exit_code < 0:
        return -exit_code
    if sandboxed and 128 < exit_code < 128 + 65:
        return exit_code - 128
    return None


def _signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def _classify(result: ExecResult, io: _Streams, nonce: str, limits: Limits, sandboxed: bool) -> None:
    """Set status, reason and exception from the status pipe, the exit code and the caller's own kills."""
    lines = io.lines()
    cpu_limit = io.limits.get("RLIMIT_CPU") or limits.rlimits()["RLIMIT_CPU"]
    if io.over_output:
        result.status, result.reason = KILLED, f"more than {limits.max_output_mb:g} MB of output"
        return
    if io.timed_out:
        result.status, result.reason = TIMEOUT, f"wall-clock limit of {limits.wall_limit_s:g} s"
        return
    if f"done {nonce}" in lines and result.exit_code == 0:
        result.status = COMPLETED
        return
    for line in lines:
        if line.startswith("syntax "):
            result.status, result.exception = SYNTAX, line[7:].strip() or "SyntaxError"
            result.reason = "the program does not compile"
            return
    if not any(line.startswith("limits ") for line in lines):
        result.status = ERROR
        result.reason = f"the sandbox did not start: {_last_line(result.stderr) or f'exit code {result.exit_code}'}"
        return
    exceptions = [line[10:].strip() for line in lines if line.startswith("exception ")]
    signo = _signal_of(result.exit_code, sandboxed)
    # SIGXCPU at the CPU limit; SIGKILL one second later for a program that ignores SIGXCPU.
    if signo == signal.SIGXCPU or (signo == signal.SIGKILL and result.wall_s >= cpu_limit + 1):
        result.status, result.reason = TIMEOUT, f"CPU-time limit of {cpu_limit} s"
        return
    if exceptions:
        result.exception = exceptions[-1]
        if result.exception == "MemoryError":
            result.status, result.reason = MEMORY, f"memory limit of {limits.memory_mb} MB"
        else:
            result.status, result.reason = EXCEPTION, f"raised {result.exception}"
        return
    if signo is not None:
        result.status, result.reason = KILLED, f"killed by {_signal_name(signo)}"
        return
    result.status = EXITED
    result.reason = f"exited with code {result.exit_code} before its end"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def bwrap_available(path: str | None = None) -> bool:
    """Whether a bwrap executable is there (not whether it can start a sandbox: ``Sandbox.check`` says that)."""
    return find_bwrap(path) is not None


__all__ = [
    "COMPLETED",
    "ERROR",
    "EXCEPTION",
    "EXITED",
    "KILLED",
    "MEMORY",
    "SYNTAX",
    "TIMEOUT",
    "ExecResult",
    "Limits",
    "Sandbox",
    "bwrap_available",
    "find_bwrap",
]
