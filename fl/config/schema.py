"""The experiment config: one `Config` made of eight sections, each a small dataclass with its own
rules (`fl.config.data`, `model`, `federation`, `local`, `privacy`, `distill`, `runtime`,
`output`).

Every key is a field of exactly one section, and `Config` inherits them all, so a reader says
`cfg.lr` whatever section owns it; a recipe may name the section (`local: {lr: 1e-3}`, or the
override `local.lr=1e-3`) or not (`lr: 1e-3`): `SECTION_OF`, derived from the sections, is the one
table between the two. Each field's metadata gives its help, its kind (choices or a numeric range,
`fl.config.fields`) and its effect, from which the keys a resume may change (`RESUMABLE_KEYS`) and
the keys `fl compare` ignores (`COMPARE_IGNORED`) derive. Building a Config checks every field by
its type and kind, then each section's rules, and raises `ConfigError` with one line naming the key
and the fix. Adding a key: a field in its section, read where it is used; nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fl.config.data import DataSection
from fl.config.distill import DistillSection
from fl.config.federation import FederationSection
from fl.config.fields import check_field, check_type, parse_ranks, unknown_key_message
from fl.config.local import LocalSection
from fl.config.model import ModelSection
from fl.config.output import OutputSection
from fl.config.privacy import PrivacySection
from fl.config.runtime import RuntimeSection
from fl.errors import ConfigError

__all__ = ["COMPARE_IGNORED", "Config", "ConfigError", "RESUMABLE_KEYS", "SECTIONS", "SECTION_OF", "parse_ranks"]

# in the order `fl run --help` lists them; the rules of a section run in this order too
SECTIONS: tuple[type, ...] = (
    DataSection,
    ModelSection,
    FederationSection,
    LocalSection,
    PrivacySection,
    DistillSection,
    RuntimeSection,
    OutputSection,
)


@dataclass
class Config(*reversed(SECTIONS)):  # type: ignore[misc]  # reversed: dataclass fields come base-first
    """Every key of every section, flat (`cfg.lr`, `cfg.dp_clip`); see the module docstring."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Config(lrr=1): a ConfigError that suggests the close keys, not the dataclass's TypeError
        unknown = [k for k in kwargs if k not in SECTION_OF]
        if unknown:
            raise ConfigError(unknown_key_message(unknown[0], list(SECTION_OF)))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field by its type and kind, then each section's rules; raise ConfigError naming the key."""
        for f in dataclasses.fields(self):
            value = check_type(f.name, getattr(self, f.name), str(f.type))
            setattr(self, f.name, value)
            if not (f.name == "task" and isinstance(value, dict)):  # a task component has no choices
                check_field(f.name, value, f.metadata)
        for section in SECTIONS:
            section.check(self)

    def section(self, name: str) -> dict[str, Any]:
        """One section's keys and values, e.g. `cfg.section("dp")`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(_BY_NAME[name])}

    def to_dict(self) -> dict[str, Any]:
        """Every key, flat (what results.json and checkpoints record)."""
        return dataclasses.asdict(self)


def key_tables(sections: tuple[type, ...]) -> tuple[dict[str, str], frozenset[str], frozenset[str]]:
    """What the sections' fields say, as tables: key -> its section, the keys a resume may change,
    the keys `fl compare` ignores. A key in two sections is an error (the flat spelling must be one key)."""
    section_of: dict[str, str] = {}
    resumable, ignored = set(), set()
    for s in sections:
        for f in dataclasses.fields(s):
            if f.name in section_of and section_of[f.name] != s.SECTION:
                raise TypeError(f"config key {f.name} is in sections {section_of[f.name]} and {s.SECTION}")
            section_of[f.name] = s.SECTION
            if f.metadata["resumable"]:
                resumable.add(f.name)
            if not f.metadata["compared"]:
                ignored.add(f.name)
    return section_of, frozenset(resumable), frozenset(ignored)


_BY_NAME = {s.SECTION: s for s in SECTIONS}
SECTION_OF, RESUMABLE_KEYS, COMPARE_IGNORED = key_tables(SECTIONS)
