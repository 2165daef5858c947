"""`python -m ecs_imds …` is `ecs-imds …` (how ecs_imds.testing starts a server)."""

from ecs_imds.cli import main

main()
