"""The one page filter: parsed once at the edge, compiled to a host mask and to a Qdrant filter.

Every way in (CLI ``--filter``, the HTTP ``filter`` body field, ``RAGPipeline.search(filter=...)``)
turns what the user wrote into a :class:`Filter` with :meth:`Filter.parse` or
:meth:`Filter.from_pairs`; a bad key, type or value is an :class:`~indexer.errors.InvalidRequest`
there, naming it. After that the filter is a typed value, and both places that apply it agree by
construction:

- :meth:`Filter.mask` over the payload bits the token index keeps in host memory (exact search);
- :meth:`Filter.qdrant` as a Qdrant ``Filter`` (two-stage prefetch, document listings).

Keys: ``doc_id``, ``source``, ``file_name`` (strings), ``page_number`` (an integer) and
``metadata.<key>`` (user metadata: a string, an integer or a number). A scalar means equality, a list
means "any of" (all strings or all integers, as Qdrant's ``MatchAny`` needs). Comparisons follow
Qdrant's: types never mix (``"3"`` does not match ``3``), a number matches an integer or a float
payload of the same value, and a payload that holds a list matches when any element does.

Booleans cannot be filtered on: qdrant-edge-py 0.9 turns a boolean match value into the integer 1
(``MatchValue(True).value == 1``), so embedded Qdrant would match ``1`` and miss ``true``
(tests/test_filters.py shows it). A boolean filter value is refused with that reason rather than
answered differently by the two search modes; store such metadata as strings.

>>> f = Filter.parse({"doc_id": ["a", "b"], "metadata.lang": "en"})
>>> f.mask([{"doc_id": "a", "metadata": {"lang": "en"}}, {"doc_id": "c", "metadata": {"lang": "en"}}]).tolist()
[True, False]
>>> Filter.from_pairs(["page_number=2,3"]).to_dict()
{'page_number': [2, 3]}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.errors import InvalidRequest

Scalar = str | int | float

#: Page fields a filter may name, with the type their values have.
FIELDS: dict[str, type] = {"doc_id": str, "source": str, "file_name": str, "page_number": int}
METADATA_PREFIX = "metadata."
MAX_KEY_CHARS = 128
MAX_VALUES = 1024
KEYS_HELP = "doc_id, source, file_name, page_number or metadata.<key> (e.g. metadata.lang)"


@dataclass(frozen=True)
class FilterAPI:
    """The filter classes of one Qdrant API (``qdrant_edge`` or ``qdrant_client.models``).

    Both accept the same keyword arguments: ``Filter(must=...)``, ``FieldCondition(key=, match=,
    range=)``, ``MatchValue(value=)``, ``MatchAny(any=)`` and a range class with ``gte=``/``lte=``.
    """

    Filter: Any
    FieldCondition: Any
    MatchValue: Any
    MatchAny: Any
    Range: Any


@dataclass(frozen=True)
class Clause:
    """``key`` matches any of ``values`` (one value: equality; none: matches nothing)."""

    key: str
    values: tuple[Scalar, ...]
    many: bool = False  # written as a list (kept so ``to_dict`` round-trips)

    def matches(self, payload_value: Any) -> bool:
        candidates = payload_value if isinstance(payload_value, list) else [payload_value]
        return any(_equal(want, have) for want in self.values for have in candidates)

    def qdrant(self, api: FilterAPI) -> Any:
        if self.many or len(self.values) > 1:
            return api.FieldCondition(key=self.key, match=api.MatchAny(any=list(self.values)))
        (value,) = self.values
        if isinstance(value, float):  # Qdrant matches numbers by range, keywords and integers by value
            return api.FieldCondition(key=self.key, range=api.Range(gte=value, lte=value))
        return api.FieldCondition(key=self.key, match=api.MatchValue(value=value))


@dataclass(frozen=True)
class Filter:
    """A conjunction of :class:`Clause` s. Hashable, so it can key caches and group batched searches."""

    clauses: tuple[Clause, ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def parse(cls, raw: Filter | Mapping[str, Any] | None) -> Filter:
        """A filter from a JSON-like mapping (HTTP body, Python caller); ``None`` and ``{}`` match everything."""
        if raw is None:
            return cls()
        if isinstance(raw, Filter):
            return raw
        if not isinstance(raw, Mapping):
            raise InvalidRequest(f"a filter must be an object of field -> value, got {type(raw).__name__}")
        clauses = []
        for key, value in raw.items():
            field_type = _field_type(key)
            if isinstance(value, (list, tuple, set, frozenset)):
                values = list(value)
                if len(values) > MAX_VALUES:
                    raise InvalidRequest(f"filter {key!r}: at most {MAX_VALUES} values, got {len(values)}")
                checked = tuple(_check_value(key, v, field_type) for v in values)
                kinds = {_kind(v) for v in checked}
                if len(kinds) > 1 or kinds - {"s", "i"}:
                    raise InvalidRequest(
                        f"filter {key!r}: a list of values must be all strings or all integers, got {values!r}"
                    )
                clauses.append(Clause(key, checked, many=True))
            else:
                clauses.append(Clause(key, (_check_value(key, value, field_type),)))
        return cls(tuple(clauses))

    @classmethod
    def from_pairs(cls, pairs: Iterable[str]) -> Filter:
        """A filter from command-line ``key=value`` pairs; ``a,b`` means any of; ``page_number`` is an integer.

        >>> Filter.from_pairs(["doc_id=a,b", "metadata.lang=en"]).to_dict()
        {'doc_id': ['a', 'b'], 'metadata.lang': 'en'}
        """
        raw: dict[str, Any] = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise InvalidRequest(f"--filter {pair!r} is not key=value (e.g. doc_id=ID or metadata.lang=en)")
            field_type = _field_type(key)
            parts = text.split(",") if "," in text else None
            if field_type is int:
                try:
                    raw[key] = [int(p) for p in parts] if parts is not None else int(text)
                except ValueError:
                    raise InvalidRequest(f"--filter {key}: {text!r} is not an integer") from None
            else:
                raw[key] = parts if parts is not None else text
        return cls.parse(raw)

    @classmethod
    def where(cls, **equal: Scalar) -> Filter:
        """Equality on trusted keys, for the store's own look-ups (``Filter.where(doc_id=...)``)."""
        return cls(tuple(Clause(k, (v,)) for k, v in equal.items()))

    # ------------------------------------------------------------------ use
    def __bool__(self) -> bool:
        return bool(self.clauses)

    @property
    def matches_nothing(self) -> bool:
        """True when some clause has an empty value list (``{"doc_id": []}``)."""
        return any(not c.values for c in self.clauses)

    def matches(self, bits: Mapping[str, Any]) -> bool:
        """Whether one page's payload (or the token index's payload bits) passes every clause."""
        return all(c.matches(_lookup(bits, c.key)) for c in self.clauses)

    def mask(self, bits: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Bool ``(P,)``: which of ``P`` pages pass."""
        if not self.clauses:
            return np.ones(len(bits), dtype=bool)
        return np.fromiter((self.matches(b) for b in bits), dtype=bool, count=len(bits))

    def qdrant(self, api: FilterAPI, kind: str | None = "page") -> Any:
        """The Qdrant ``Filter`` (``kind == kind`` added unless None), or None when there is no condition.

        Call only when not :attr:`matches_nothing` (Qdrant has no "false" condition; callers return
        no results instead).
        """
        must = [] if kind is None else [api.FieldCondition(key="kind", match=api.MatchValue(value=kind))]
        must += [c.qdrant(api) for c in self.clauses]
        return api.Filter(must=must) if must else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form :meth:`parse` reads back."""
        return {c.key: list(c.values) if c.many else c.values[0] for c in self.clauses}


# ---------------------------------------------------------------------------------------------- helpers
def _field_type(key: Any) -> type | None:
    """The value type of a filter key (None: any metadata value); InvalidRequest for an unknown key."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise InvalidRequest(f"filter: {str(key)[:MAX_KEY_CHARS]!r} is not a field; use {KEYS_HELP}")
    if key in FIELDS:
        return FIELDS[key]
    if key.startswith(METADATA_PREFIX) and key[len(METADATA_PREFIX) :].strip():
        return None
    raise InvalidRequest(f"filter: unknown field {key!r}; use {KEYS_HELP}")


def _check_value(key: str, value: Any, field_type: type | None) -> Scalar:
    if field_type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"filter {key!r}: needs an integer, got {value!r}")
        return value
    if field_type is str:
        if not isinstance(value, str):
            raise InvalidRequest(f"filter {key!r}: needs a string, got {value!r}")
        return value
    if isinstance(value, bool):
        raise InvalidRequest(
            f"filter {key!r}: boolean values cannot be filtered on (embedded Qdrant cannot match them); "
            'store the metadata as a string ("true"/"false") and filter on that'
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"filter {key!r}: {value!r} is not a finite number")
    if not isinstance(value, (str, int, float)):
        raise InvalidRequest(f"filter {key!r}: needs a string or a number, got {type(value).__name__}")
    return value


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "b"
    if isinstance(v, int):
        return "i"
    if isinstance(v, float):
        return "f"
    return "s"


def _equal(want: Scalar, have: Any) -> bool:
    kw, kh = _kind(want), _kind(have) if isinstance(have, (str, int, float, bool)) else None
    if kh is None:
        return False
    if kw == "f":  # a number range: integer and float payloads both match
        return kh in ("i", "f") and float(have) == want
    return kw == kh and have == want


def _lookup(bits: Mapping[str, Any], key: str) -> Any:
    if key.startswith(METADATA_PREFIX):
        return (bits.get("metadata") or {}).get(key[len(METADATA_PREFIX) :])
    return bits.get(key)


__all__ = ["FIELDS", "Clause", "Filter", "FilterAPI"]
