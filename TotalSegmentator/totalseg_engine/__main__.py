"""``python -m totalseg_engine ...`` runs the command line (how the Slicer panel starts the engine)."""

from .cli import run

run()
