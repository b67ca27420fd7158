"""The `layerfilm` command in a process of its own (its real entry point, layerfilm_main, signals included),
for tests that need what only a process shows: exit codes after signals, text printed at exit, peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = "import sys; from layerfilm_main import main; sys.exit(main(sys.argv[1:]))"


def layerfilm_process(*argv: object, cwd: Path) -> subprocess.Popen:
    """Start ``layerfilm ARGV`` in ``cwd`` (this checkout's package), its stdout and stderr piped as text."""
    return subprocess.Popen([sys.executable, "-c", CODE, *map(str, argv)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})


def run_measured(*argv: object, cwd: Path, timeout: float = 120, prelude: str = "") -> tuple[int, str, str, int]:
    """Run ``layerfilm ARGV`` to its end: (exit code, stdout, stderr, peak RSS in bytes of that process alone,
    from its own rusage as wait4 reaps it). ``prelude``: Python run first in that process (a hook). Killed,
    and TimeoutError raised, past ``timeout`` seconds."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", prelude + "\n" + CODE, *map(str, argv)], cwd=cwd, stdout=out, stderr=err,
                                text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise TimeoutError(f"layerfilm {argv} still ran after {timeout} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss * 1024  # Linux: KiB
