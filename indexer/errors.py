"""The one error hierarchy raised by colsmol's core.

Edges map it: the CLI to an exit code and one line, the API to a 4xx/503 JSON body.
Every message names the bad value and says what to do about it.
"""

from __future__ import annotations


class ColsmolError(Exception):
    """Base class of every error colsmol raises on purpose."""


class ConfigError(ColsmolError):
    """A setting or argument has a value that cannot work."""


class DocumentError(ColsmolError):
    """One input file cannot be turned into pages (corrupt, encrypted, empty, unsupported...).

    ``path`` names the file; the rest of a batch goes on without it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


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


class DiskFull(StoreUnavailable):
    """The disk holding the data directory (page images, embedded Qdrant) has no room left.

    What was stored before stays intact: freeing space and running the same command again finishes the job.
    """


class EncryptedDocument(DocumentError):
    """A PDF that needs a user password to open (none was given, or the one given is wrong)."""
