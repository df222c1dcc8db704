"""Task-type patterns: the task types an API key's permission covers.

Rules (docs/security.md says the same for users; NATS subjects are the model):
1. A task type is read as segments separated by ``.``: ``billing.invoice.send`` has three.
2. A pattern is segments too. A segment is a literal (matches that exact segment), ``*`` (any one
   segment), or, as the last segment only, ``>`` (one or more segments, whatever they are).
   ``>`` alone matches every type: it is how "all types" is written.
3. Wildcards are whole segments: ``email*`` and ``a.>.b`` are refused, not guessed at. An empty
   segment (``a..b``, ``.a``) is refused too.
4. A set of patterns matches a type when any one of them does.

Pure: no I/O. ``TypePatterns`` answers ``in`` and ``isdisjoint`` like the frozenset of literal
types a CLAIM may carry, so the engine's claim paths take either.
"""

from __future__ import annotations

from collections.abc import Iterable

ALL = ">"
ONE = "*"
MAX_PATTERN_LEN = 255  # a task type on the wire is at most 255 bytes too


class PatternError(ValueError):
    """A pattern breaks the rules above; the message says which rule."""


def check_pattern(pattern: object) -> str:
    """``pattern`` if it follows the rules, else PatternError naming what is wrong."""
    if not isinstance(pattern, str):
        raise PatternError(f"{pattern!r} is not a string")
    if not pattern or len(pattern) > MAX_PATTERN_LEN:
        raise PatternError(f"{pattern!r} must be 1..{MAX_PATTERN_LEN} characters")
    if any(c.isspace() for c in pattern):
        raise PatternError(f"{pattern!r} holds white space")
    segments = pattern.split(".")
    for i, seg in enumerate(segments):
        if not seg:
            raise PatternError(f"{pattern!r} has an empty segment (segments are separated by '.')")
        if seg == ALL and i != len(segments) - 1:
            raise PatternError(f"{pattern!r}: '>' may only be the last segment")
        if seg not in (ALL, ONE) and ("*" in seg or ">" in seg):
            raise PatternError(f"{pattern!r}: a wildcard must be a whole segment ('*' or '>')")
    return pattern


def _match(segments: tuple[str, ...], parts: list[str]) -> bool:
    for i, seg in enumerate(segments):
        if seg == ALL:
            return len(parts) > i
        if i >= len(parts) or (seg != ONE and seg != parts[i]):
            return False
    return len(parts) == len(segments)


class TypePatterns:
    """A validated set of patterns (rule 4). ``all`` is True when it matches every type."""

    __slots__ = ("patterns", "all", "_literal", "_wild")

    def __init__(self, patterns: Iterable[str]) -> None:
        pats = tuple(sorted({check_pattern(p) for p in patterns}))
        if not pats:
            raise PatternError("no pattern given (write '>' for every type)")
        self.patterns = pats
        self.all = ALL in pats
        self._literal = frozenset(p for p in pats if ONE not in p.split(".") and not p.endswith(ALL))
        self._wild = tuple(tuple(p.split(".")) for p in pats if p not in self._literal)

    def matches(self, task_type: str) -> bool:
        if self.all or task_type in self._literal:
            return True
        if not self._wild:
            return False
        parts = task_type.split(".")
        return any(_match(w, parts) for w in self._wild)

    __contains__ = matches

    def isdisjoint(self, types: Iterable[str]) -> bool:
        """No type of ``types`` matches (frozenset's meaning, for the claim paths)."""
        return not any(self.matches(t) for t in types)

    def union(self, other: TypePatterns) -> TypePatterns:
        return TypePatterns(self.patterns + other.patterns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypePatterns) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"TypePatterns({list(self.patterns)!r})"


ALL_TYPES = TypePatterns((ALL,))

__all__ = ["ALL", "ALL_TYPES", "PatternError", "TypePatterns", "check_pattern"]
