"""``python -m api.cli``: the same as the ``colsmol`` command."""

from api.cli.app import main

main()
