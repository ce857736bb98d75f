"""`python -m fl ...` is the `fl` console script."""

import sys

from fl.cli import main

if __name__ == "__main__":
    sys.exit(main())
