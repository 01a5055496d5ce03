"""Run untrusted generated code in a subprocess with time and memory limits.

Defence in depth, not a security boundary: a fresh isolated interpreter (`-I`), an empty
temporary working directory, a scrubbed environment, rlimits on address space, CPU
seconds, file size and core dumps, its own process group (killed whole on timeout),
and a prelude that disables the most destructive os/shutil/subprocess functions.
Run evals of untrusted models inside a container as well.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile

_GUARD = '''
import builtins, os, shutil, subprocess, faulthandler
faulthandler.disable()
for _n in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
           "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
           "chroot", "lchown", "chdir"):
    setattr(os, _n, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
del _n
'''


@dataclasses.dataclass
class ExecResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout"
    detail: str = ""


def _limits(memory_mb: int, cpu_s: int):
    def apply():
        import resource

        mem = int(memory_mb) * 1024 * 1024
        for res, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem), (resource.RLIMIT_CPU, cpu_s),
                         (resource.RLIMIT_FSIZE, 16 * 1024 * 1024), (resource.RLIMIT_CORE, 0)):
            try:
                resource.setrlimit(res, (val, val))
            except (ValueError, OSError):
                pass

    return apply


def run_program(code: str, timeout: float = 5.0, memory_mb: int = 1024, guard: bool = True) -> ExecResult:
    with tempfile.TemporaryDirectory(prefix="glassgpt-exec-") as d:
        path = os.path.join(d, "prog.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write((_GUARD if guard else "") + "\n" + code)
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "HOME": d,
               "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-B", path], cwd=d, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    preexec_fn=_limits(memory_mb, int(timeout) + 1), start_new_session=True)
        except OSError as e:
            return ExecResult(False, "failed", f"could not start: {e}")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.communicate()
            return ExecResult(False, "timeout", f"ran past {timeout}s")
        if proc.returncode == 0:
            return ExecResult(True, "passed")
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return ExecResult(False, "failed", tail[0][:300])
