"""`python -m registry.cli ...`: the same command line as the `swiftreg` console script."""
from . import main

main()
