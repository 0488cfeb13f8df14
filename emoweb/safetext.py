"""Text from outside (arguments, form fields, file names, label files) made storable, in one place.

Python turns bytes that are not UTF-8 into lone surrogates (command-line arguments and file names
use surrogateescape: byte 0xff becomes U+DCFF), and JSON may spell one ("\\ud800"). No database
driver can encode a lone surrogate, and PostgreSQL refuses NUL, so such text ended in a traceback
at the insert. The services pass every piece of free text through `clean` before using it, and
text files given as bytes (label files, training manifests) through `decode`: each bad character
becomes U+FFFD, the rest is kept.
"""
from __future__ import annotations

import unicodedata

REPLACEMENT = "\ufffd"


def clean(value: str) -> str:
    """`value` with each lone surrogate and NUL replaced by U+FFFD (a valid surrogate pair becomes the
    character it spells); text without them comes back unchanged."""
    if value.isascii() and "\x00" not in value:
        return value
    fixed = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return fixed.replace("\x00", REPLACEMENT)


def name(value: str) -> str:
    """A name a person types (a profile, a label): `clean`, stripped, in Unicode NFC, so "Zoë" typed with a
    decomposed "ë" (as macOS sends it) and with a composed one is one name."""
    return unicodedata.normalize("NFC", clean(value).strip())


def name_key(value: str) -> str:
    """What two names that read alike share (NFKC, case-folded): "Anna", "ANNA" and "ａｎｎａ" have one key."""
    return unicodedata.normalize("NFKC", clean(value).strip()).casefold()


def decode(data: bytes) -> str:
    """A text file's bytes as UTF-8 (a leading byte-order mark dropped), invalid bytes as U+FFFD."""
    return clean(data.decode("utf-8-sig", "replace"))
