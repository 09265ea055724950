"""flows.xmlscan: the hardened streaming reader every XML in raccord goes through — what it
yields, and what it refuses."""

from __future__ import annotations

import io

import pytest

from flows import xmlscan


def stream(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode())


def test_nodes_number_each_element_and_name_its_parent() -> None:
    document = '<r a="1"><x k="v">one</x><y><z>two</z></y></r>'
    assert list(xmlscan.nodes(stream(document))) == [
        (1, 0, "x", "one", {"k": "v"}),
        (3, 2, "z", "two", {}),
        (2, 0, "y", "", {}),
        (0, -1, "r", "", {"a": "1"}),
    ]


def test_texts_give_every_element_root_first_with_its_attributes() -> None:
    document = '<ns:r xmlns:ns="urn:x" a="1"><ns:x k="v"> one </ns:x></ns:r>'
    assert list(xmlscan.texts(stream(document))) == [
        ("r", "", {"a": "1"}),
        ("x", "one", {"k": "v"}),
        ("r", "", {"a": "1"}),
    ]


def test_records_are_yielded_whole_and_tagged() -> None:
    document = "<r><rec><a>1</a></rec><other/><rec><a>2</a></rec></r>"
    found = []
    for kind, element in xmlscan.records(stream(document), frozenset({"rec"})):
        children = [c.text for c in element] if kind == "record" else []
        found.append((kind, xmlscan.local_name(element), children))
    assert found == [("root", "r", []), ("record", "rec", ["1"]), ("record", "rec", ["2"])]


def test_comments_and_processing_instructions_never_split_a_text() -> None:
    """A comment inside a value would otherwise cut it short (lxml keeps the rest as a tail)."""
    document = "<r><a>F-<!-- c -->12</a><b>X<?pi data?>Y</b></r>"
    texts = {name: text for name, text, _ in xmlscan.texts(stream(document))}
    assert texts["a"] == "F-12" and texts["b"] == "XY"


def test_refusals_say_why() -> None:
    with pytest.raises(xmlscan.XmlError, match="no element found"):
        xmlscan.scan(io.BytesIO(b""))
    with pytest.raises(xmlscan.XmlError, match=r"^document type declarations \(DTD\) are refused$"):
        xmlscan.scan(stream('<!DOCTYPE r [<!ENTITY e "x">]><r>&e;</r>'))
    with pytest.raises(xmlscan.XmlError) as caught:
        list(xmlscan.texts(stream("<r><a></r>")))
    message = str(caught.value)
    assert "mismatch" in message.lower() and "line 1" in message and message == message.strip()


def test_absurdly_deep_documents_are_refused() -> None:
    """lxml's huge_tree stays off: a document nested a thousand deep is refused (with
    huge_tree, lxml would take it), so is one nested thousands deep."""
    deep = "<a>" * 1000 + "</a>" * 1000
    with pytest.raises(xmlscan.XmlError, match="Excessive depth"):
        list(xmlscan.texts(stream(deep)))


def test_scan_picks_values_by_local_path_whatever_the_prefix() -> None:
    document = '<p:r xmlns:p="urn:x" v="2"><p:h><p:id> A-1 </p:id></p:h><p:id>B</p:id></p:r>'

    def wanted(root: tuple[str, str]) -> dict[tuple[str, ...], str]:
        return {("h", "id"): "number", ("id",): "other"} if root == ("urn:x", "r") else {}

    found = xmlscan.scan(stream(document), wanted)
    assert (found.namespace, found.local_name, dict(found.attributes)) == ("urn:x", "r", {"v": "2"})
    assert dict(found.values) == {"number": "A-1", "other": "B"}
    assert xmlscan.scan(stream(document)).values == {}
