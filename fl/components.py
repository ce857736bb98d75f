"""Where `fl.components` lived before the rooms (issue 34): kept so that `from fl.components import
instantiate` and friends go on working. The code is `fl.config.components`.
"""

from fl.config.components import IMPORT_ENV, REGISTRY, import_user_modules, instantiate, resolve, short_name, validate

__all__ = ["IMPORT_ENV", "REGISTRY", "import_user_modules", "instantiate", "resolve", "short_name", "validate"]
