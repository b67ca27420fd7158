"""The ``layerfilm`` command's entry point, outside the package on purpose: it sets up signals before
anything heavy is imported (importing layerfilm brings NumPy and matplotlib: most of a second), so
that a Ctrl-C or a SIGTERM at any moment ends with one line and the usual exit code (130, 143).

While the package is imported a signal is only noted (raising inside a C extension's initialisation
can abort the interpreter); the command then stops before doing anything."""

from __future__ import annotations

import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, docker stop), raised like Ctrl-C so that every output's cleanup runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _stopped(terminated: bool) -> int:
    print(f"layerfilm: {'terminated' if terminated else 'interrupted'}; nothing half-written was left", file=sys.stderr)
    return 143 if terminated else 130


def main(argv: list[str] | None = None) -> int:
    received: list[int] = []
    old_int = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        from layerfilm.cli.commands import main as cli_main
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        if received:  # nothing was started: there is nothing to clean up
            return _stopped(received[0] == signal.SIGTERM)
        return cli_main(argv)  # handles its own interrupts; this catches those between the two
    except KeyboardInterrupt as e:
        return _stopped(isinstance(e, Terminated))
    finally:
        signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
