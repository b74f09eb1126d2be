"""Run untrusted generated Python in a separate, limited process.

Each program runs as ``python -I`` (isolated: no user site, no ``PYTHON*`` variables, the script's folder not on
``sys.path``) in a fresh temporary working directory that is deleted afterwards, with:

* an address-space limit (``RLIMIT_AS``), a CPU-time limit (``RLIMIT_CPU``), a file-size limit (``RLIMIT_FSIZE``)
  and no core dumps, set by a preamble before the program's first line (no ``preexec_fn``: unsafe in a
  threaded parent);
* a wall-clock timeout, after which the child's whole process group is killed;
* where the kernel allows unprivileged namespaces (``unshare --user --net --mount``): no network (a new, empty
  network namespace) and a read-only view of every file system except the temporary folder, so generated code
  cannot touch the user's files;
* in any case a preamble that replaces ``socket.socket`` and friends before the program runs; the environment
  holds no proxy variables and ``HOME`` points into the temporary folder.

Nothing here changes the calling process: no global monkey-patching, no disabled builtins.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

PREAMBLE = """
import resource as _r, sys
_mem, _cpu = int(sys.argv[1]), int(sys.argv[2])
for _lim, _v in ((_r.RLIMIT_AS, _mem), (_r.RLIMIT_CPU, _cpu), (_r.RLIMIT_FSIZE, 1 << 24), (_r.RLIMIT_CORE, 0)):
    _r.setrlimit(_lim, (_v, _v))
import socket as _s, _socket as _ss
def _denied(*a, **k):
    raise OSError("network access is disabled in the sandbox")
for _m in (_s, _ss):
    _m.socket = type("socket", (_m.socket,), {"__init__": _denied})
    for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        if hasattr(_m, _name):
            setattr(_m, _name, _denied)
del _s, _ss, _m, _name, _r, _mem, _cpu, _lim, _v
import runpy
sys.argv = sys.argv[3:]
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


# inside the new namespaces: every mount read-only, the work folder ($1) writable, then run the program
ISOLATE = (
    'D="$1"; shift; mount --bind "$D" "$D" || exit 90; '
    "for m in $(awk '{print $2}' /proc/self/mounts); do mount -o remount,bind,ro \"$m\" 2>/dev/null; done; "
    'mount -o remount,bind,rw "$D" || exit 91; cd "$D" && exec "$@"'
)


def _isolated(cmd: list[str], folder: str) -> list[str]:
    unshare = shutil.which("unshare") or "unshare"
    return [unshare, "--user", "--map-root-user", "--net", "--mount", "sh", "-c", ISOLATE, "sh", folder, *cmd]


@functools.cache
def netns_available() -> bool:
    """True when the namespace isolation (no network, read-only file systems) works here."""
    if not all(shutil.which(t) for t in ("unshare", "sh", "awk", "mount")):
        return False
    with tempfile.TemporaryDirectory(prefix="saesteer-sandbox-") as tmp:
        try:
            r = subprocess.run(_isolated(["true"], tmp), capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return False
    return r.returncode == 0


def run_python(program: str, timeout_s: float = 10.0, memory_mb: int = 1024, cpu_s: int | None = None) -> SandboxResult:
    """Run ``program`` in the sandbox; ``passed`` when it exits 0 within the limits."""
    cpu = cpu_s if cpu_s is not None else max(1, int(timeout_s) + 1)
    with tempfile.TemporaryDirectory(prefix="saesteer-sandbox-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(program)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        cmd = [sys.executable, "-I", "-c", PREAMBLE, str(memory_mb * 1024 * 1024), str(cpu), path]
        if netns_available():
            cmd = _isolated(cmd, tmp)
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
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
