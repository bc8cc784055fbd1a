"""The sandbox's stand-in for Stripe's invoice PDF: one page, one line of text.

Stripe makes the real PDFs; the portal only links to them. The sandbox needs a file that
opens in a PDF reader, so it writes the smallest valid one (objects, cross-reference
table, trailer) around a single line of Helvetica.
"""


def _escape(text: str) -> str:
    # A PDF string is written in parentheses: escape those and the backslash, and keep
    # to characters the standard font can show.
    safe = text.encode("latin-1", "replace").decode("latin-1")
    return safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def one_page_pdf(line: str) -> bytes:
    """A US-letter page with `line` written near its top."""
    stream = f"BT /F1 14 Tf 72 720 Td ({_escape(line)}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref_at,
    )
    return bytes(out)
