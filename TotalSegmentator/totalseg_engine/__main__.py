"""``python -m totalseg_engine ...`` runs the command line (how the Slicer panel starts the engine)."""

from .cli.main import run

run()
