"""A small self-contained HTML report: headings, tables and images embedded as base64."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ddpm.errors import DataError
from ddpm.report._figure import printable
from ddpm.storage import atomic_write_bytes

__all__ = ["html_table", "write_html"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; image-rendering: pixelated; }
""".strip()


def _cell(value: object, float_format: str) -> str:
    if isinstance(value, float):
        return html.escape(format(value, float_format))
    return html.escape(str(value))


def html_table(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str] | None = None,
    float_format: str = ".4g",
) -> str:
    """An HTML table with one row per mapping; columns default to the keys of the first row.

    Floats are formatted with ``float_format``; every cell is escaped; missing cells are empty.
    """
    columns = list(columns if columns is not None else (rows[0] if rows else []))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c, ''), float_format)}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image_tag(path: Path, alt: str) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise DataError(f"{path}: cannot embed this image type; use one of {', '.join(_MIME)}")
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as e:
        raise DataError(f"{path}: cannot read the image ({e.strerror}); write it first") from None
    return f'<img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">'


def write_html(
    path: str | os.PathLike,
    title: str,
    sections: Sequence[tuple[str, str | Path]],
) -> Path:
    """Write one stand-alone HTML file: a title, then per section a heading and its content.

    Content that is a :class:`pathlib.Path` is an image, embedded as a base64 data URI so the
    file needs nothing beside it; content that is a ``str`` is an HTML snippet inserted as is
    (e.g. from :func:`html_table`; escape plain text with ``html.escape``). Written atomically.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_STYLE}\n</style></head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, content in sections:
        parts.append(f"<section><h2>{html.escape(heading)}</h2>")
        if isinstance(content, Path):
            parts.append(f"<figure>{_image_tag(content, heading)}</figure>")
        elif isinstance(content, str):
            parts.append(content)
        else:
            raise DataError(
                f"section {heading!r}: content must be an HTML str or an image Path, "
                f"not {type(content).__name__}"
            )
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return atomic_write_bytes(path, printable("\n".join(parts)).encode("utf-8"))
