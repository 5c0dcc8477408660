"""``python -m okdph``: the ``okdph`` command."""

import sys

from okdph.cli import main

sys.exit(main())
