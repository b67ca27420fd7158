"""``python -m layerfilm`` is the ``layerfilm`` command."""

import sys

from .cli import main

sys.exit(main())
