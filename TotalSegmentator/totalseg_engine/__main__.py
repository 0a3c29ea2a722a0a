"""``python -m totalseg_engine ...`` runs the command line (how the Slicer panel starts the engine)."""

import sys

from .cli import main

sys.exit(main())
