"""What every page featvis writes shares: text escaped for HTML, data made safe inside a script element, values
shortened for one-line messages, and the page written as valid UTF-8."""

from __future__ import annotations

import html
import json
import math
import os
import re
from typing import Any

from featvis._io import atomic_write_bytes

# Inside <script>, "</script" ends the element and "<!--" followed by "<script" enters the "script data double
# escaped" state, where "</script>" no longer ends it (HTML Living Standard 4.12.1.3, "Restrictions for contents of
# script elements"): a JSON block holding either swallowed the page's own script. JSON may write "<", ">" and "&"
# (only inside strings) as \u escapes, so none of them is left in the block.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_SURROGATE = re.compile("[\ud800-\udfff]")  # a JSON "\ud800" escape gives a lone surrogate, which UTF-8 cannot write
MESSAGE_VALUE_CHARS = 80  # a value quoted in a one-line error message is cut to this


def esc(value: Any) -> str:
    """Text (or any value as text) escaped for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def short(value: Any, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """repr(value) cut to `limit` characters, for quoting a value from a file in a one-line message."""
    text = repr(value) if not isinstance(value, str) or len(value) <= 4 * limit else repr(value[:4 * limit])
    return text if len(text) <= limit else text[:limit - 1] + "…"


def clip(text: str, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """Text (an exception's message) cut to `limit` characters, first line only."""
    text = str(text).splitlines()[0] if str(text) else ""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def finite(value: Any) -> Any:
    """A number that is finite, else None (also for bools and non-numbers): what a page shows as a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def script_json(data: Any) -> str:
    """`data` as JSON to put inside <script type="application/json">: it holds no "<", ">" or "&", so it cannot end
    the element or swallow the next one, and JSON.parse reads it back to the same values. Non-finite numbers become
    null (JSON.parse rejects NaN and Infinity); `data` is made of dicts, lists and scalars featvis built."""
    text = json.dumps(_nulled(data), ensure_ascii=True, allow_nan=False)  # ascii: U+2028/9 and surrogates as \u
    return re.sub("[<>&]", lambda m: _SCRIPT_ESCAPES[m.group()], text)


def _nulled(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _nulled(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_nulled(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def write_page(path: str | os.PathLike, page: str) -> None:
    """Write the page atomically as UTF-8; a lone surrogate (from a JSON escape in a run's files) becomes U+FFFD."""
    atomic_write_bytes(path, _SURROGATE.sub("\ufffd", page).encode("utf-8"))
