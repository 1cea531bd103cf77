"""``python -m worker`` = ``guardq worker``."""

from worker.cli import main

main()
