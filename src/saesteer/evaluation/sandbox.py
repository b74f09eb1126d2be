"""Run untrusted generated Python in a separate, limited process.

Each program runs as ``python -I`` (isolated: no user site, no ``PYTHON*`` variables, the script's folder not on
``sys.path``) in a fresh temporary working directory that is deleted afterwards, with:

* an address-space limit (``RLIMIT_AS``), a CPU-time limit (``RLIMIT_CPU``), a file-size limit (``RLIMIT_FSIZE``)
  and no core dumps, set in the child before it starts (``preexec_fn``);
* a wall-clock timeout, after which the child's whole process group is killed;
* no network: a new empty network namespace (``unshare --user --net``) where the kernel allows it, and in any case
  a preamble that replaces ``socket.socket`` and friends before the program runs; the environment holds no proxy
  variables and ``HOME`` points into the temporary folder.

Nothing here changes the calling process: no global monkey-patching, no disabled builtins.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

PREAMBLE = """
import socket as _s, _socket as _ss
def _denied(*a, **k):
    raise OSError("network access is disabled in the sandbox")
for _m in (_s, _ss):
    _m.socket = type("socket", (_m.socket,), {"__init__": _denied})
    for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        if hasattr(_m, _name):
            setattr(_m, _name, _denied)
del _s, _ss, _m, _name
import sys, runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class SandboxResult:
    """How a program ended: ``status`` is passed, failed (non-zero exit), timeout or error (could not start)."""

    status: str
    returncode: int | None
    stderr_tail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def netns_available() -> bool:
    """True when ``unshare --user --net`` can make an empty network namespace here."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        r = subprocess.run([exe, "--user", "--map-root-user", "--net", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _limits(memory_mb: int, cpu_s: int) -> None:
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(program: str, timeout_s: float = 10.0, memory_mb: int = 1024, cpu_s: int | None = None) -> SandboxResult:
    """Run ``program`` in the sandbox; ``passed`` when it exits 0 within the limits."""
    cpu = cpu_s if cpu_s is not None else max(1, int(timeout_s) + 1)
    with tempfile.TemporaryDirectory(prefix="saesteer-sandbox-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(program)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        cmd = [sys.executable, "-I", "-c", PREAMBLE, path]
        if netns_available():
            cmd = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--net", *cmd]
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=functools.partial(_limits, memory_mb, cpu),
            )
        except OSError as exc:
            return SandboxResult("error", None, str(exc))
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return SandboxResult("timeout", None, "")
        finally:
            _kill_group(proc)  # children a passing program left behind
        tail = err.decode("utf-8", "replace")[-2000:]
        if proc.returncode == 0:
            return SandboxResult("passed", 0, tail)
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return SandboxResult("timeout", proc.returncode, tail)
        return SandboxResult("failed", proc.returncode, tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
