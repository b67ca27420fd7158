"""``python -m layerfilm`` is the ``layerfilm`` command."""

import sys

from layerfilm.cli.main import main

sys.exit(main())
