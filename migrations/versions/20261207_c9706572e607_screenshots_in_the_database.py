"""screenshots in the database

Revision ID: c9706572e607
Revises: 0cc72248f2b1
Created: 2026-12-07 01:00:00

Screenshots sent with refund requests move from an app server's disk into a table of
their own, so that every app server serves them. The files in the folder where the
release before kept them (the UPLOAD_FOLDER setting, default instance/uploads) are
copied into the table. A file missing there, or one the table would refuse, is logged
and skipped: its attachment keeps its name and answers 404, as it did. The folder is
left as it is; delete it once this upgrade is committed.

Names of screenshots accepted before names were cleaned may hold control characters
(which break the Content-Disposition header) or a path: they are cleaned here the way
the portal now cleans them when it accepts a file.
"""

import logging
import re
import unicodedata
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from flask import current_app

revision = "c9706572e607"
down_revision = "0cc72248f2b1"
branch_labels = None
depends_on = None

log = logging.getLogger("portal.migrations")

MAX_FILE_BYTES = 5 * 1024 * 1024
CONTENT_TYPES = ("image/png", "image/jpeg")

attachments = sa.table(
    "attachments",
    sa.column("id", sa.Integer),
    sa.column("filename", sa.String),
    sa.column("content_type", sa.String),
    sa.column("storage_key", sa.String),
)


def upgrade():
    stored_files = op.create_table(
        "stored_files",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=50), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            f"size_bytes > 0 AND size_bytes <= {MAX_FILE_BYTES}",
            name=op.f("ck_stored_files_size_within_limit"),
        ),
        sa.CheckConstraint(
            "content_type IN ('image/png', 'image/jpeg')",
            name=op.f("ck_stored_files_content_type_allowed"),
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_stored_files")),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(
            attachments.c.id,
            attachments.c.filename,
            attachments.c.content_type,
            attachments.c.storage_key,
        ).order_by(attachments.c.id)
    ).all()
    folder = Path(current_app.config.get("UPLOAD_FOLDER") or "")
    for attachment_id, filename, content_type, key in rows:
        _copy_file(connection, stored_files, folder, attachment_id, content_type, key)
        clean = _clean_name(filename, key)
        if clean != filename:
            connection.execute(
                attachments.update()
                .where(attachments.c.id == attachment_id)
                .values(filename=clean)
            )


def _copy_file(connection, stored_files, folder: Path, attachment_id, content_type, key):
    path = folder / key
    if not path.is_file():
        log.warning("attachment %s: no file %s, skipped", attachment_id, path)
        return
    content = path.read_bytes()
    if not 0 < len(content) <= MAX_FILE_BYTES or content_type not in CONTENT_TYPES:
        log.warning(
            "attachment %s: %s (%s, %s bytes) is not kept, skipped",
            attachment_id,
            path,
            content_type,
            len(content),
        )
        return
    connection.execute(
        stored_files.insert().values(
            key=key,
            content_type=content_type,
            size_bytes=len(content),
            content=content,
            created_at=sa.func.now(),
        )
    )


def _clean_name(filename: str, key: str) -> str:
    name = re.split(r"[/\\]", filename)[-1]
    # Whitespace of any kind (tabs, line breaks) becomes one space; other control and
    # invisible characters go.
    name = "".join(
        char
        for char in name
        if char.isspace() or not unicodedata.category(char).startswith("C")
    )
    name = " ".join(name.split()).lstrip(". ")
    return name or f"screenshot.{key.rpartition('.')[2]}"


def downgrade():
    # Screenshots sent since the upgrade are lost with the table; those copied from the
    # folder are still there (the upgrade leaves it as it is).
    op.drop_table("stored_files")
