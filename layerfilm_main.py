"""The ``layerfilm`` command's entry point, outside the package on purpose: it sets up signals before
anything heavy is imported (importing layerfilm brings NumPy, torch's loaders, matplotlib: most of a
second), so that a Ctrl-C or a SIGTERM at any moment ends with one line and the usual exit code."""

from __future__ import annotations

import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, docker stop), raised like Ctrl-C so that every output's cleanup runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            from layerfilm.cli import main as cli_main
        except KeyboardInterrupt as e:  # nothing was started: there is nothing to clean up
            print(f"layerfilm: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; nothing half-written "
                  "was left", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
        return cli_main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
