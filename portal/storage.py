"""Files the portal keeps (screenshots sent with refund requests), stored in the database.

Every app server reads the same database, so a file stored through one server is served
by all of them, and backups of the database hold the files too. A file is written in
the caller's transaction, with the rows that name it: a transaction that fails leaves
no file behind, and one that commits never lacks its file.

Only small images are kept: the table refuses anything larger than MAX_FILE_BYTES or
of another content type, so nothing else can ever be served from the portal's origin.
"""

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import CheckConstraint, LargeBinary, String, delete
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import UTCDateTime, db
from portal.timeutil import utcnow

MAX_FILE_BYTES = 5 * 1024 * 1024
CONTENT_TYPES = ("image/png", "image/jpeg")


class StoredFile(db.Model):
    """One file's bytes, under the key that the rows naming it keep."""

    __tablename__ = "stored_files"
    __table_args__ = (
        CheckConstraint(
            f"size_bytes > 0 AND size_bytes <= {MAX_FILE_BYTES}", name="size_within_limit"
        ),
        CheckConstraint(
            "content_type IN ({})".format(", ".join(f"'{kind}'" for kind in CONTENT_TYPES)),
            name="content_type_allowed",
        ),
    )

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(50))
    size_bytes: Mapped[int]
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def put(key: str, content: bytes, content_type: str) -> None:
    """Store `content` under `key`, in the caller's transaction.

    :raises ValueError: the file is empty, too large or of a type the portal does not
        keep (callers check what customers send first; this is the last guard).
    """
    if not 0 < len(content) <= MAX_FILE_BYTES:
        raise ValueError(f"a stored file has 1 to {MAX_FILE_BYTES} bytes, not {len(content)}")
    if content_type not in CONTENT_TYPES:
        raise ValueError(f"{content_type!r} files are not kept")
    db.session.add(
        StoredFile(key=key, content=content, content_type=content_type, size_bytes=len(content))
    )


def get(key: str) -> StoredFile | None:
    """The file stored under `key`, or None."""
    return db.session.get(StoredFile, key)


def delete_files(keys: Iterable[str]) -> None:
    """Delete the files under `keys`, in the caller's transaction."""
    keys = list(keys)
    if keys:
        db.session.execute(delete(StoredFile).where(StoredFile.key.in_(keys)))
