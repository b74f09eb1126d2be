"""The one Markdown + HTML renderer of saesteer's reports (the study's report, the feature report).

A document is a title and a list of :class:`Section`; a section holds blocks:
``("p", text)``, ``("table", headers, rows)``, ``("img", alt, src, link)``, ``("list", items)``. Both formats come
from the same blocks, so they always carry the same content. Text may use two Markdown marks, ``**bold**`` and
`` `code` ``, which the HTML output renders too.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Block = tuple[Any, ...]  # ("p", text) | ("table", headers, rows) | ("img", alt, src, link) | ("list", items)


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def fmt_seconds(s: float) -> str:
    """``1h 02m 03s``, ``4m 05s`` or ``6s``."""
    if not math.isfinite(s):
        return "n/a"
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


# --- Markdown ----------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: Sequence[Section]) -> str:
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for block in sec.blocks:
            kind = block[0]
            if kind == "p":
                out += [block[1], ""]
            elif kind == "table":
                headers, rows = block[1], block[2]
                out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(_md_cell(str(c)) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{block[1]}]({block[2]})", ""]
            elif kind == "list":
                out += [f"- {item}" for item in block[1]] + [""]
    return "\n".join(out).rstrip() + "\n"


# --- HTML --------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{font-size:1.25em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #d0d0d0;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
code{background:#f3f3f3;padding:0 .2em}
"""


def _inline(text: str) -> str:
    """HTML-escape, then the two Markdown marks the sections use: **bold** and `code`."""
    out = html.escape(text)
    for mark, tag in (("**", "strong"), ("`", "code")):
        parts = out.split(mark)
        if len(parts) % 2 == 1:
            out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
    return out


def to_html(title: str, sections: Sequence[Section]) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        for block in sec.blocks:
            kind = block[0]
            if kind == "p":
                out.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in block[2]
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "img":
                alt, src = html.escape(block[1]), html.escape(block[2], quote=True)
                out.append(
                    f'<figure><a href="{src}"><img src="{src}" alt="{alt}"></a><figcaption>{alt}</figcaption></figure>'
                )
            elif kind == "list":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
