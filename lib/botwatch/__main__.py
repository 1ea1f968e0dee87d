"""``python -m botwatch`` runs the same CLI as the ``botwatch`` console script."""
from botwatch.cli import main

main()
