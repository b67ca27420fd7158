"""``python -m layerfilm`` is the ``layerfilm`` command."""

import sys

from layerfilm.cli.commands import main

sys.exit(main())
