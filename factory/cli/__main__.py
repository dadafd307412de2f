"""`python -m factory.cli`: the same as the `factory` console script."""

from factory.cli import main

main()
