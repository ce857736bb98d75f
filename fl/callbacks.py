"""Where `fl.callbacks` lived before the rooms (issue 34): kept so that `import fl.callbacks`,
`from fl.callbacks import RunInfo` and recipes naming `fl.callbacks:EarlyStopping` go on working.
The code is `fl.output.callbacks`; write new imports against that (or `fl.Callback`, `fl.EarlyStopping`).
"""

from fl.output.callbacks import Callback, CallbackList, EarlyStopping, RunInfo

__all__ = ["Callback", "CallbackList", "EarlyStopping", "RunInfo"]
