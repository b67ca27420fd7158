"""The `layerfilm` command in a process of its own (its real entry point, layerfilm_main, signals included),
for tests that need what only a process shows: exit codes after signals, text printed at exit, peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = "import sys; from layerfilm_main import main; sys.exit(main(sys.argv[1:]))"


def layerfilm_process(*argv: object, cwd: Path, prelude: str = "") -> subprocess.Popen:
    """Start ``layerfilm ARGV`` in ``cwd`` (this checkout's package), its stdout and stderr piped as text.
    ``prelude``: Python run first in that process (a setting)."""
    return subprocess.Popen([sys.executable, "-c", prelude + "\n" + CODE, *map(str, argv)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})


# Runs the command as a child of its own (argv[2:]) and writes that child's peak RSS (KiB) to fd argv[1]. A
# process started straight from a test worker counts the worker's own peak in its ru_maxrss: the child of
# vfork (or fork) runs in the parent's memory until exec, and Linux keeps that memory's high-water mark as
# the process's maxrss. Forked from this small launcher, the command's peak is its own.
LAUNCH = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.close(int(sys.argv[1]))
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
os.write(int(sys.argv[1]), str(usage.ru_maxrss).encode())
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def run_measured(*argv: object, cwd: Path, timeout: float = 120, prelude: str = "") -> tuple[int, str, str, int]:
    """Run ``layerfilm ARGV`` to its end: (exit code, stdout, stderr, peak RSS in bytes of that process alone,
    from its own rusage as wait4 reaps it: see LAUNCH). ``prelude``: Python run first in that process (a
    hook). Killed, and TimeoutError raised, past ``timeout`` seconds."""
    read, write = os.pipe()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(write), "-c", prelude + "\n" + CODE, *map(str, argv)],
                                cwd=cwd, stdout=out, stderr=err, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)},
                                pass_fds=(write,), start_new_session=True)
        os.close(write)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise TimeoutError(f"layerfilm {argv} still ran after {timeout} s") from None
        finally:
            with os.fdopen(read) as f:
                peak = f.read()
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), int(peak) * 1024  # Linux: KiB
