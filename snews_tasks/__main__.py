"""`python -m snews_tasks` is `snews-tasks`."""

from .entrypoints.cli import main

main()
