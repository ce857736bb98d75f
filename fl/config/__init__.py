"""The config room: sections of keys with their rules (`schema` and one module per section), what a
key accepts (`fields`), recipes and `key=value` overrides (`recipe`), and `_component_` resolution
for the parts, tasks and callbacks a recipe names (`components`). Pure Python and YAML: it may import
`fl.errors` only (components import user code when asked), never torch, so `fl --help` stays quick.
"""

from fl.config.schema import COMPARE_IGNORED, RESUMABLE_KEYS, SECTION_OF, SECTIONS, Config, parse_ranks
from fl.errors import ConfigError  # its home is fl.errors; kept here for imports written before

__all__ = ["COMPARE_IGNORED", "Config", "ConfigError", "RESUMABLE_KEYS", "SECTIONS", "SECTION_OF", "parse_ranks"]
