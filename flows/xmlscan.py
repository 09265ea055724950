"""A hardened, streaming XML scan: the root element and a few values picked by path.

Invoices may be 30 MB; recognising one must not build a 30 MB tree. The scan reads the document
with lxml's ``iterparse`` and keeps only the stack of element names, the text of the elements it
was asked for, and nothing else (every element is cleared when it ends).

Hostile input: a document type declaration (DTD) is refused outright — Chorus Pro formats never
use one, and refusing it closes the door on external entities (XXE) and entity expansion bombs
("billion laughs") whatever the parser's defaults. Entities are never resolved and the network is
never reached.

Large invoices: a UBL invoice may carry its PDF as one base64 text node of tens of megabytes,
over libxml2's default 10 MB limit on a text node. A seekable source is therefore read in
libxml2's huge mode, whose limits are bounded instead by the size of the source (the gateway
reads nothing over ``max_file_size``). Huge mode also lifts libxml2's guard against entity
amplification, so the prolog is first read once in the default mode, up to the root's start: a
DTD is refused there, before any huge parse can begin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from lxml import etree

#: Given a root (namespace, local name), the paths to pick and the key each value is stored under.
PathsForRoot = Callable[[tuple[str, str]], Mapping[tuple[str, ...], str]]


class XmlError(ValueError):
    """The bytes are not an acceptable XML document; the message says why."""


@dataclass(frozen=True)
class XmlScan:
    """What a scan found: the root's namespace and local name, and the values asked for."""

    namespace: str
    local_name: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, str] = field(default_factory=dict)


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def _iterparse(source: IO[bytes], *, huge: bool = False) -> Any:
    """lxml's iterparse with every door shut: no entities, no network, no DTD loading."""
    return etree.iterparse(
        source,
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=huge,
        remove_comments=True,
        remove_pis=True,
    )


def _events(source: IO[bytes]) -> Iterator[tuple[str, Any]]:
    """``("root", element)`` once, then ``("start"|"end", element)`` for the others.

    Raises:
        XmlError: not well-formed, empty, or carries a DTD.
    """
    seen_root = False
    huge = _seekable(source)
    try:
        if huge:
            start = source.tell()
            _refuse_dtd(source)
            source.seek(start)
        for event, element in _iterparse(source, huge=huge):
            if seen_root:
                yield event, element
                continue
            if element.getroottree().docinfo.doctype:
                raise XmlError("document type declarations (DTD) are refused")
            seen_root = True
            yield "root", element
    except etree.XMLSyntaxError as exc:
        raise XmlError(_syntax_message(exc)) from None
    if not seen_root:
        raise XmlError("no root element (empty document)")


def _seekable(source: IO[bytes]) -> bool:
    try:
        return bool(source.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _refuse_dtd(source: IO[bytes]) -> None:
    """Read ``source`` in libxml2's default mode up to the root's start tag.

    Raises:
        XmlError: it carries a DTD (or is malformed before its root, or has none).
        etree.XMLSyntaxError: from the parser.
    """
    for _, element in _iterparse(source):
        if element.getroottree().docinfo.doctype:
            raise XmlError("document type declarations (DTD) are refused")
        return


def _attributes(element: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in element.attrib.items()}


def _release(element: Any) -> None:
    """Free a finished element and its earlier siblings (only open ancestors stay)."""
    element.clear(keep_tail=False)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


def records(source: IO[bytes], names: frozenset[str]) -> Iterator[tuple[str, Any]]:
    """Stream a document as ``("root", element)`` for the root's start, then
    ``("record", element)`` for each complete element whose local name is in ``names``.

    A record's subtree is whole when it is yielded and released right after, as is everything
    outside records: memory stays bounded by the largest record, not the document.

    Raises:
        XmlError: not well-formed, empty, or carries a DTD.
    """
    depth_in_record = 0
    for event, element in _events(source):
        if event == "root":
            yield "root", element
            continue
        in_names = local_name(element) in names
        if event == "start":
            depth_in_record += in_names
            continue
        if in_names and depth_in_record:
            depth_in_record -= 1
            if depth_in_record == 0:
                yield "record", element
        if depth_in_record == 0:
            _release(element)


def texts(source: IO[bytes]) -> Iterator[tuple[str, str, dict[str, str]]]:
    """Stream ``(local name, stripped text, attributes)`` of every element, root first, each
    element released once read: for documents whose schema is not known.

    Raises:
        XmlError: not well-formed, empty, or carries a DTD.
    """
    for event, element in _events(source):
        if event == "root":
            yield local_name(element), "", _attributes(element)
        elif event == "end":
            yield local_name(element), (element.text or "").strip(), _attributes(element)
            _release(element)


def nodes(source: IO[bytes]) -> Iterator[tuple[int, int, str, str, dict[str, str]]]:
    """Stream ``(serial, parent serial, local name, stripped text, attributes)`` of every element
    as it ends (children before their parent; the root is serial 0, its parent -1), each released
    once read: for reading documents of unknown schema record by record.

    Raises:
        XmlError: not well-formed, empty, or carries a DTD.
    """
    stack: list[int] = []
    serial = 0
    for event, element in _events(source):
        if event == "root":
            stack.append(0)
        elif event == "start":
            serial += 1
            stack.append(serial)
        else:
            mine = stack.pop()
            parent = stack[-1] if stack else -1
            yield (
                mine,
                parent,
                local_name(element),
                (element.text or "").strip(),
                _attributes(element),
            )
            _release(element)


def local_name(element: Any) -> str:
    return _split(element.tag)[1] if isinstance(element.tag, str) else ""


def scan(
    source: IO[bytes],
    wanted: PathsForRoot | None = None,
) -> XmlScan:
    """Scan ``source`` and return its root and the values at the paths ``wanted`` names.

    ``wanted`` maps the root (namespace, local name) to ``{path: key}``, where a path is the tuple
    of local names below the root (prefixes and namespaces of descendants are ignored, so any
    prefix works). The first value met for a key wins. With ``wanted`` None, or no entry for the
    root found, the scan stops right after the root's start tag.

    Raises:
        XmlError: not well-formed, empty, or carries a DTD.
    """
    stack: list[str] = []
    values: dict[str, str] = {}
    paths: Mapping[tuple[str, ...], str] = {}
    root: tuple[str, str] | None = None
    attributes: dict[str, str] = {}
    events = _events(source)
    for _, element in events:  # the root's start
        root = _split(element.tag)
        attributes = _attributes(element)
        paths = wanted(root) if wanted is not None else {}
        break
    wanted_keys = len(set(paths.values()))
    if wanted_keys:
        # The hot loop of every analysis (~75 events for an invoice's header): names are
        # taken inline rather than through local_name(), and nothing else is done per event.
        for event, element in events:
            tag = element.tag
            if event == "start":
                stack.append(tag.rpartition("}")[2] if isinstance(tag, str) else "")
                continue
            if stack:
                key = paths.get(tuple(stack))
                if key is not None and key not in values and element.text:
                    text = element.text.strip()
                    if text:
                        values[key] = text
                stack.pop()
            _release(element)
            if len(values) == wanted_keys:
                break
    assert root is not None  # _events raises on a document without one
    return XmlScan(root[0], root[1], attributes, values)


def _syntax_message(exc: etree.XMLSyntaxError) -> str:
    # lxml's message already names the line and column.
    return str(exc.msg or exc).strip()
