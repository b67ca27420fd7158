"""The command line: its commands and signals (commands), its flags generated from the options tree (flags)."""

from layerfilm.cli.commands import main

__all__ = ["main"]
