"""Render docs/REPORT.md (with its figures) to docs/REPORT.pdf.

    pip install -r requirements-docs.txt && python docs/build_pdf.py [--src REPORT.md] [--out REPORT.pdf]

Markdown -> HTML (python-markdown, tables extension) -> PDF (xhtml2pdf); image paths are resolved
relative to the Markdown file, so the figures under docs/figures/ are embedded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STYLE = """
@page { size: a4; margin: 1.6cm; }
body { font-family: Helvetica; font-size: 9.5pt; line-height: 1.35; }
h1 { font-size: 17pt; } h2 { font-size: 13.5pt; margin-top: 14pt; } h3 { font-size: 11pt; }
table { border: 0.5pt solid #999; margin: 4pt 0; }
th, td { border: 0.5pt solid #999; padding: 2pt 3pt; font-size: 8pt; }
th { background-color: #eeeeee; }
pre, code { font-family: Courier; font-size: 7.5pt; }
pre { background-color: #f4f4f4; padding: 4pt; }
img { width: 16cm; }
"""


def build(src: Path, out: Path) -> Path:
    import markdown
    from xhtml2pdf import pisa

    html_body = markdown.markdown(src.read_text(encoding="utf-8"), extensions=["tables", "fenced_code"])
    html = f"<html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>{html_body}</body></html>"
    base = src.resolve().parent

    def link_callback(uri: str, _rel: str) -> str:
        path = (base / uri).resolve()
        return str(path) if path.exists() else uri

    with out.open("wb") as fh:
        status = pisa.CreatePDF(html, dest=fh, link_callback=link_callback, encoding="utf-8")
    if status.err:
        raise SystemExit(f"PDF rendering reported {status.err} error(s)")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--src", type=Path, default=here / "REPORT.md")
    parser.add_argument("--out", type=Path, default=here / "REPORT.pdf")
    args = parser.parse_args()
    print(f"wrote {build(args.src, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
