"""Web pages, Markdown and EPUB made inert before LibreOffice lays them out.

LibreOffice's HTML import fetches what a page points at: ``<img src=http://...>``, ``<img src=file:///...>``,
``<iframe>``, ``<object>``, linked style sheets. So every web-like input is rewritten first, through Python's
``html.parser`` (a maintained, forgiving HTML tokenizer), into a page that points at nothing:

- elements that load or run something are dropped with their content (script, iframe, object, embed, link,
  meta, base, svg, audio, video, form controls...);
- ``<img>`` keeps only an embedded ``data:image/...`` source, otherwise it becomes its alt text;
- ``<a href>`` keeps only ``http(s):``, ``mailto:`` and ``#`` targets (a link is text in a PDF, never fetched);
- every other URL-valued attribute (``src``, ``srcset``, ``background``, ``poster``, ``data``, ``action``...),
  event handlers (``on*``) and any CSS that contains ``url(``, ``@import`` or ``expression(`` are removed.

Markdown is turned into HTML by the ``markdown`` package, then sanitised the same way (Markdown allows raw HTML).
An EPUB's spine (its chapters in reading order, found through ``META-INF/container.xml`` and the OPF package file,
parsed with ``defusedxml``) becomes one sanitised page per chapter, its own images inlined as ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
import posixpath
import re
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from indexer.errors import DocumentError

_DROP_WITH_CONTENT = frozenset(
    {
        "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "noscript", "template",
        "svg", "audio", "video", "canvas", "select", "textarea", "button", "title", "noembed",
        "noframes", "portal", "math",
    }
)  # fmt: skip
_DROP = frozenset({"link", "meta", "base", "source", "track", "input", "param", "keygen", "img"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
                   "track", "wbr", "keygen"})  # fmt: skip
_STRUCTURE = frozenset({"html", "head", "body", "form"})
_URL_ATTRS = frozenset(
    {"src", "srcset", "href", "background", "poster", "data", "codebase", "action", "formaction", "cite",
     "longdesc", "usemap", "lowsrc", "dynsrc", "xlink:href", "manifest", "profile", "classid", "archive", "ping"}
)  # fmt: skip
_UNSAFE_CSS = re.compile(r"url\s*\(|@import|expression\s*\(|image-set\s*\(|-moz-binding|behavior\s*:", re.I)
_SAFE_LINK = re.compile(r"^\s*(https?:|mailto:|#)", re.I)
_DATA_IMAGE = re.compile(r"^\s*data:image/(png|jpe?g|gif|webp|bmp);base64,[A-Za-z0-9+/=\s]+$", re.I)
_MAX_INLINE_IMAGE = 8 << 20


class _Sanitizer(HTMLParser):
    def __init__(self, images: dict[str, str] | None = None, body_only: bool = False) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0  # depth inside a dropped element
        self.skip_tag: list[str] = []
        self.images = images or {}  # src as written -> data: URI (EPUB images)
        self.body_only = body_only

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, closed=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, closed=True)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], closed: bool) -> None:
        if self.skip:
            if tag in _DROP_WITH_CONTENT and not closed:
                self.skip += 1
            return
        if tag in _DROP_WITH_CONTENT:
            if not closed:
                self.skip = 1
            return
        if tag == "img":
            self._image(dict(attrs))
            return
        if tag in _DROP or tag in _STRUCTURE or ":" in tag:
            return
        kept = []
        for name, value in attrs:
            name = name.lower()
            value = value or ""
            if name.startswith("on") or name in ("srcdoc", "formaction"):
                continue
            if name == "style" and _UNSAFE_CSS.search(value):
                continue
            if name in _URL_ATTRS and not (tag == "a" and name == "href" and _SAFE_LINK.match(value)):
                continue
            kept.append(f' {name}="{html.escape(value, quote=True)}"')
        self.out.append(f"<{tag}{''.join(kept)}{' /' if closed or tag in _VOID else ''}>")

    def _image(self, attrs: dict[str, str | None]) -> None:
        src = (attrs.get("src") or "").strip()
        src = self.images.get(src, src)
        alt = html.escape(attrs.get("alt") or "", quote=True)
        if _DATA_IMAGE.match(src) and len(src) <= _MAX_INLINE_IMAGE * 4 // 3 + 100:
            self.out.append(f'<img src="{html.escape(src, quote=True)}" alt="{alt}" />')
        elif alt:
            self.out.append(f"<span>[{alt}]</span>")

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            if tag in _DROP_WITH_CONTENT:
                self.skip -= 1
            return
        if tag in _DROP or tag in _VOID or tag in _STRUCTURE or ":" in tag:
            return
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(html.escape(data, quote=False))

    # Comments (IE conditional comments load things), processing instructions and declarations are dropped.
    def handle_comment(self, data: str) -> None:
        return

    def handle_pi(self, data: str) -> None:
        return

    def handle_decl(self, decl: str) -> None:
        return

    def unknown_decl(self, data: str) -> None:
        return


def _title(text: str) -> str:
    found = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
    return html.escape(html.unescape(found.group(1)).strip()[:300]) if found else ""


def sanitize_html(text: str, images: dict[str, str] | None = None) -> str:
    """The body of the HTML ``text`` with everything that could load or run removed (see the module docstring).

    >>> sanitize_html('<p onclick="x()">Hi <img src="file:///etc/passwd" alt="logo"><iframe src="/etc/hosts">'
    ...               'in</iframe><a href="http://e.org/">e</a></p><style>p{background:url(http://x)}</style>')
    '<p>Hi <span>[logo]</span><a href="http://e.org/">e</a></p>'
    """
    parser = _Sanitizer(images)
    parser.feed(text)
    parser.close()
    return "".join(parser.out)


def page(body: str, title: str = "") -> str:
    """A complete UTF-8 HTML document around a sanitised ``body``."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        + title
        + "</title></head><body>\n"
        + body
        + "\n</body></html>\n"
    )


def decode_text(data: bytes) -> str:
    """Bytes of a web page or text file as text: a BOM or a declared charset wins, then UTF-8, then cp1252."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", "replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    declared = re.search(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", data[:4096], re.I)
    if declared:
        try:
            return data.decode(declared.group(1).decode("ascii"), "replace")
        except LookupError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def html_file(path: Path) -> str:
    """A web page file made inert, as a complete HTML document."""
    text = decode_text(_read(path))
    return page(sanitize_html(text), _title(text))


def markdown_file(path: Path) -> str:
    """A Markdown file rendered to HTML by the ``markdown`` package, then made inert."""
    import markdown

    body = markdown.markdown(decode_text(_read(path)), extensions=["tables", "fenced_code", "sane_lists"])
    return page(sanitize_html(body))


def epub_file(path: Path) -> str:
    """An EPUB's chapters, in spine order, as one inert HTML document (a page break before each chapter)."""
    from defusedxml import ElementTree

    try:
        with zipfile.ZipFile(path) as zf:
            container = ElementTree.fromstring(zf.read("META-INF/container.xml"))
            rootfile = next((e.get("full-path") for e in container.iter() if e.tag.endswith("rootfile")), None)
            if not rootfile:
                raise DocumentError(str(path), "corrupt EPUB file (container.xml names no package file)")
            opf = ElementTree.fromstring(zf.read(rootfile))
            base = posixpath.dirname(rootfile)
            manifest = {
                e.get("id"): (
                    posixpath.normpath(posixpath.join(base, unquote(e.get("href") or ""))),
                    e.get("media-type"),
                )
                for e in opf.iter()
                if e.tag.endswith("}item") or e.tag == "item"
            }
            spine = [e.get("idref") for e in opf.iter() if e.tag.endswith("itemref") or e.tag == "itemref"]
            names = set(zf.namelist())
            chapters = []
            for idref in spine:
                href, media = manifest.get(idref, (None, None))
                if href is None or href not in names or "html" not in (media or "html"):
                    continue
                text = decode_text(zf.read(href))
                images = _epub_images(zf, names, posixpath.dirname(href), text)
                chapters.append(sanitize_html(text, images))
            title = next((e.text or "" for e in opf.iter() if e.tag.endswith("}title")), "")
    except DocumentError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, ElementTree.ParseError) as e:
        raise DocumentError(str(path), f"corrupt EPUB file ({type(e).__name__}: {str(e)[:200]})") from None
    except Exception as e:  # noqa: BLE001 - defusedxml refuses entity tricks with its own exceptions
        raise DocumentError(str(path), f"corrupt EPUB file ({type(e).__name__}: {str(e)[:200]})") from None
    if not chapters:
        raise DocumentError(str(path), "no pages (the EPUB's spine names no XHTML chapter)")
    # LibreOffice's HTML import honours a page break on a paragraph-level element, not on an empty <div>.
    breaks = '\n<h1 style="page-break-before: always"></h1>\n'
    return page(breaks.join(chapters), html.escape(title.strip()[:300]))


_IMG_SRC = re.compile(r"""<img[^>]+src\s*=\s*["']([^"']+)["']""", re.I)
_IMAGE_TYPES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".webp": "webp", ".bmp": "bmp"}


def _epub_images(zf: zipfile.ZipFile, names: set[str], folder: str, text: str) -> dict[str, str]:
    """The chapter's images that live inside the EPUB, as ``src -> data: URI`` (nothing outside it is read)."""
    found: dict[str, str] = {}
    for src in set(_IMG_SRC.findall(text)):
        if ":" in src or src.startswith("/"):
            continue
        name = posixpath.normpath(posixpath.join(folder, unquote(src)))
        kind = _IMAGE_TYPES.get(posixpath.splitext(name)[1].lower())
        if kind is None or name not in names or zf.getinfo(name).file_size > _MAX_INLINE_IMAGE:
            continue
        found[src] = f"data:image/{kind};base64," + base64.b64encode(zf.read(name)).decode("ascii")
    return found


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DocumentError(str(path), f"unreadable: {e.strerror or e}") from None
