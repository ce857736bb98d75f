"""`python -m fl ...` is the `fl` console script."""

from fl.cli import entry

if __name__ == "__main__":
    entry()
