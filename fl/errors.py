"""The exceptions fl raises on purpose, each with a message that names the problem and the fix.

- `ConfigError`: bad input of any kind (a recipe, a key, a value, a file, a component); the CLI
  prints its one line and exits 2, before anything is written.
- `RunStopped`: a job that stopped part-way (a signal, a dead or silent rank); finished rounds and
  checkpoints are kept, results.json says "interrupted"; the CLI exits 1.

Nothing here imports anything of fl's, so every room can raise them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad recipe, key, value, input file or component; the message names the problem and the fix.

    `quiet=True` marks a copy of an error that another rank already printed.
    """

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


class RunStopped(RuntimeError):
    """The job stopped part-way (a rank died, a signal, a collective timed out); finished rounds are kept."""
