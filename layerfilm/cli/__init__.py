"""The command line: its commands and signals (main), its flags generated from the options tree (flags)."""

from layerfilm.cli.main import main

__all__ = ["main"]
