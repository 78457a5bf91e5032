"""Bodies the repository answers with: directory listings (HTML, JSON) and WebDAV
multistatus XML. Pure functions of the entries; no buildbot or twisted.web imports."""

from __future__ import annotations

import html
import mimetypes
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class Item:
    """One listed file or collection, with its public URL and WebDAV href."""

    name: str
    is_dir: bool
    size: int
    modified: float
    sha256: str | None
    url: str
    href: str


def listing_json(path: str, items: list[Item]) -> dict[str, Any]:
    """The JSON listing of the collection ``path``."""
    return {
        "path": path,
        "entries": [
            {
                "name": item.name,
                "type": "collection" if item.is_dir else "file",
                "size": None if item.is_dir else item.size,
                "sha256": item.sha256,
                "modified": formatdate(item.modified, usegmt=True),
                "url": item.url,
            }
            for item in items
        ],
    }


def listing_html(path: str, items: list[Item], parent_url: str | None) -> bytes:
    """The HTML listing of the collection ``path``, for people."""
    title = html.escape(f"/{path}/" if path else "/")
    rows = []
    if parent_url is not None:
        rows.append(f'<tr><td><a href="{html.escape(parent_url)}">../</a></td></tr>')
    for item in items:
        name = html.escape(item.name + ("/" if item.is_dir else ""))
        size = "" if item.is_dir else str(item.size)
        digest = f"<code>{item.sha256}</code>" if item.sha256 else ""
        modified = formatdate(item.modified, usegmt=True)
        rows.append(
            f'<tr><td><a href="{html.escape(item.url)}">{name}</a></td><td>{size}</td>'
            f"<td>{modified}</td><td>{digest}</td></tr>"
        )
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>Artifacts {title}</title></head><body><h1>Artifacts {title}</h1>"
        "<table><tr><th>name</th><th>size</th><th>modified</th><th>sha256</th></tr>"
        + "".join(rows)
        + '</table><p><a href="?format=json">JSON</a></p></body></html>\n'
    )
    return page.encode()


def content_type(name: str) -> str:
    """The media type announced for a file called ``name``."""
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def multistatus(items: list[Item]) -> bytes:
    """A WebDAV 207 body giving every live property the repository knows for ``items``."""
    parts = ['<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">']
    for item in items:
        props = [
            f"<D:displayname>{escape(item.name)}</D:displayname>",
            f"<D:getlastmodified>{formatdate(item.modified, usegmt=True)}</D:getlastmodified>",
        ]
        if item.is_dir:
            props.append("<D:resourcetype><D:collection/></D:resourcetype>")
        else:
            props += [
                "<D:resourcetype/>",
                f"<D:getcontentlength>{item.size}</D:getcontentlength>",
                f"<D:getcontenttype>{escape(content_type(item.name))}</D:getcontenttype>",
            ]
            if item.sha256:
                props.append(f'<D:getetag>"{item.sha256}"</D:getetag>')
        parts.append(
            f"<D:response><D:href>{escape(item.href)}</D:href><D:propstat><D:prop>"
            + "".join(props)
            + "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
        )
    parts.append("</D:multistatus>\n")
    return "".join(parts).encode()
