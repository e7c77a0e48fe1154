"""The one error hierarchy raised by colsmol's core, and the hints each interface adds to it.

Edges map it: the CLI to an exit code and one line, the API to a 4xx/503 JSON body.
Every message names the bad value; what to do about it depends on where the user is (a command-line
flag means nothing to an HTTP client), so the core keeps its message neutral and attaches the advice
per interface as ``hints``; each edge appends its own with :func:`for_interface`:

>>> exc = NotFound("no document with id 'x'", hints={"cli": "`colsmol documents` lists them"})
>>> str(exc)
"no document with id 'x'"
>>> for_interface(exc, "cli"), for_interface(exc, "http")
("no document with id 'x'; `colsmol documents` lists them", "no document with id 'x'")

Texts that are not exceptions (a file's failure reason in an ingest report, an answer's text) carry
hints the same way, as :class:`HintedText` (a ``str``, so everything else treats it as its text):

>>> reason = HintedText("encrypted: needs a password", {"cli": "pass --password"})
>>> reason == "encrypted: needs a password", for_interface(reason, "cli")
(True, 'encrypted: needs a password; pass --password')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

#: Where a message is shown: the command line, or an HTTP client (the API and its web page).
Interface = Literal["cli", "http"]


class HintedText(str):
    """A neutral text with advice per interface in ``hints``; compares, prints and serializes as the text."""

    hints: dict[str, str]

    def __new__(cls, text: str, hints: Mapping[str, str] | None = None) -> HintedText:
        self = super().__new__(cls, text)
        self.hints = dict(hints or {})
        return self


class ColsmolError(Exception):
    """Base class of every error colsmol raises on purpose.

    ``str(exc)`` is the neutral message; ``hints`` maps an :data:`Interface` to advice phrased for it.
    """

    def __init__(self, message: str = "", *, hints: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.hints: dict[str, str] = {**getattr(message, "hints", {}), **(hints or {})}


def for_interface(message: ColsmolError | str | None, interface: Interface) -> str:
    """``message`` (an error or a text) with the hint for ``interface`` appended, when it has one."""
    if message is None:
        return ""
    text = str(message)
    hint = (getattr(message, "hints", None) or {}).get(interface)
    if not hint:
        return text
    return f"{text.rstrip('.')}; {hint}" if not text.endswith(".") else f"{text} {hint}"


class ConfigError(ColsmolError):
    """A setting or argument has a value that cannot work."""


class DocumentError(ColsmolError):
    """One input file cannot be turned into pages (corrupt, encrypted, empty, unsupported...).

    ``path`` names the file; the rest of a batch goes on without it. ``reason`` may be a
    :class:`HintedText`: its hints become the error's, and ``reason`` keeps them for reports.
    """

    def __init__(self, path: str, reason: str, *, hints: Mapping[str, str] | None = None) -> None:
        merged = {**getattr(reason, "hints", {}), **(hints or {})}
        super().__init__(f"{path}: {reason}", hints=merged)
        self.path = path
        self.reason: str = HintedText(reason, merged) if merged else reason


class ModelUnavailable(ColsmolError):
    """Model weights could not be found locally and could not be downloaded."""


class StoreUnavailable(ColsmolError):
    """The vector store cannot be opened or reached (in use by another process, server down...)."""


class SchemaMismatch(StoreUnavailable):
    """An existing collection was created with a schema colsmol cannot use."""


class NotFound(ColsmolError):
    """A document, page or job id that does not exist."""


class InvalidRequest(ColsmolError):
    """A query, question or parameter that is out of bounds."""


class Conflict(ColsmolError):
    """What the request would create exists already (a collection of that name)."""


class DiskFull(StoreUnavailable):
    """The disk holding the data directory (page images, embedded Qdrant) has no room left.

    What was stored before stays intact: freeing space and running the same command again finishes the job.
    """


class DeviceOutOfMemory(ColsmolError):
    """The accelerator ran out of memory on the smallest unit of work (one page, one query, one answer).

    Often transient (another request held the memory): the API answers 503 with ``Retry-After``
    (``retry_after_s`` seconds), ingest fails only the file being embedded and goes on with the others.
    """

    retry_after_s = 5


class IndexBudgetExceeded(ColsmolError):
    """Pages the search index cannot take without passing its device-memory budget (``COLSMOL_INDEX_MEMORY_GB``).

    Raised before anything is written: the store and the index stay as they were, and ingest fails the file that
    did not fit and goes on with the others. ``fix`` (what to change) ends the message: it names settings, which
    mean the same on every interface.
    """

    def __init__(self, pages: int, need_bytes: int, budget_bytes: int, device: str, fix: str) -> None:
        super().__init__(
            f"the search index would need {_size(need_bytes)} of {device} memory for {pages:,} pages, over its "
            f"budget of {_size(budget_bytes)}; {fix}"
        )
        self.pages = pages
        self.need_bytes = need_bytes
        self.budget_bytes = budget_bytes


def _size(n: int) -> str:
    """Bytes for a message: GB (2**30) to two decimals, MB or KB to one below a GB or an MB.

    >>> _size(8 << 30), _size(300 << 20), _size(196608)
    ('8.00 GB', '300.0 MB', '192.0 KB')
    """
    if n >= 2**30:
        return f"{n / 2**30:.2f} GB"
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


class EncryptedDocument(DocumentError):
    """A PDF that needs a user password to open (none was given, or the one given is wrong)."""
