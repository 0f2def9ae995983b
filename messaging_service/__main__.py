"""``python -m messaging_service`` is the same as the ``messaging-service`` command."""

from messaging_service.cli import main

main()
