"""`python -m windowgate` is the `windowgate` command."""

import sys

from windowgate.cli import main

if __name__ == "__main__":
    sys.exit(main())
