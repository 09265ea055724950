"""flows.naming: flow ids and remote-name templates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flows import naming

WHEN = datetime(2026, 11, 23, 17, 5, 9, tzinfo=UTC)


def parts(name: str) -> naming.NameParts:
    return naming.NameParts("FSO1100A", "VFE056", "20261123T170509Z-abcdef", name, WHEN, "123")


def test_flow_ids_sort_by_time_and_are_recognised() -> None:
    first = naming.new_flow_id(WHEN, "000000")
    later = naming.new_flow_id(WHEN.replace(second=10), "000000")
    assert first == "20261123T170509Z-000000" and first < later
    assert naming.is_flow_id(naming.new_flow_id(WHEN))
    assert not naming.is_flow_id("../../etc")


def test_flow_ids_never_repeat_within_a_second_even_across_the_wrap() -> None:
    ids = naming.FlowIds(start=naming.FlowIds.SPACE - 500)
    issued = [ids.new(WHEN) for _ in range(5000)]
    assert len(set(issued)) == 5000
    assert "20261123T170509Z-000000" in issued  # counted past ffffff back to 000000
    assert all(naming.is_flow_id(flow_id) for flow_id in issued)


def test_flow_ids_of_two_processes_start_apart() -> None:
    starts = {naming.FlowIds().new(WHEN) for _ in range(20)}
    assert len(starts) > 1  # random starting points (20 equal draws: 1 in 16**114)


def test_default_template_renders_every_part() -> None:
    rendered = naming.remote_name("{interface}_{partner_code}_{flow_id}{ext}", parts("f.xml"))
    assert rendered == "FSO1100A_VFE056_20261123T170509Z-abcdef.xml"


def test_a_lot_keeps_its_double_extension() -> None:
    rendered = naming.remote_name("{stem}+{flow_id}{ext}", parts("lot-x.tar.gz"))
    assert rendered == "lot-x_20261123T170509Z-abcdef.tar.gz"


def test_all_placeholders_render() -> None:
    template = "{date}-{time}-{structure}-{stem}-{name}-{flow_id}"
    assert naming.remote_name(template, parts("inv.1.xml")) == (
        "20261123-170509-123-inv.1-inv.1.xml-20261123T170509Z-abcdef"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("facture été 2026.xml", "facture__t__2026.xml"),
        ("../../etc/passwd", "passwd"),
        ("noext", "noext"),
        (".hidden.xml", "hidden.xml"),
        ("../lot-1.TAR.GZ", "lot-1.TAR.GZ"),
    ],
)
def test_odd_names_become_safe(name: str, expected: str) -> None:
    rendered = naming.remote_name("{name}_{flow_id}", parts(name))
    assert rendered == f"{expected}_20261123T170509Z-abcdef"
    assert "/" not in rendered


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{interface}{ext}", "flow_id"),
        ("{flow_id}{nope}", "unknown placeholder"),
        ("{flow_id", "malformed"),
        ("dir/{flow_id}", "'/'"),
    ],
)
def test_bad_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(naming.TemplateError, match=message):
        naming.check_template(template)


def test_template_errors_say_what_to_use() -> None:
    with pytest.raises(naming.TemplateError) as caught:
        naming.check_template("{flow_id}{nope}")
    assert str(caught.value) == (
        "unknown placeholder {nope}; use one of {date}, {ext}, {flow_id}, {interface}, {name}, "
        "{partner_code}, {stem}, {structure}, {time}"
    )
    with pytest.raises(naming.TemplateError) as caught:
        naming.check_template("{stem}")
    assert str(caught.value) == ("the template must contain {flow_id} so that every flow is unique")
    with pytest.raises(naming.TemplateError) as caught:
        naming.check_template("out/{flow_id}")
    assert str(caught.value) == ("the template must not contain '/': it names a file, not a path")


def test_remote_names_keep_the_extension_whole_and_stay_under_the_limit() -> None:
    created = datetime(2026, 11, 23, 10, 15, 0, tzinfo=UTC)
    flow = "20261123T101500Z-00a1b2"

    def render(name: str, template: str = "{stem}{ext}_{flow_id}") -> str:
        return naming.remote_name(template, naming.NameParts("I", "P", flow, name, created))

    assert render("a._x") == f"a.x_{flow}" and render("a.xml_") == f"a.xml__{flow}"
    fits = "x" * (naming.MAX_REMOTE_NAME - len(flow) - 1)
    assert len(render(fits, "{stem}_{flow_id}")) == naming.MAX_REMOTE_NAME
    with pytest.raises(naming.TemplateError) as caught:
        render(fits + "x", "{stem}_{flow_id}")
    assert str(caught.value).startswith(
        f"remote name longer than {naming.MAX_REMOTE_NAME} characters: xxx"
    )


def test_safe_names_never_start_with_a_dot_nor_come_out_empty() -> None:
    assert naming.safe("...") == "_" and naming.safe(".x") == "x" and naming.safe("") == "_"
    assert naming.split_extension(".tar.gz") == (".tar", ".gz")


def test_flow_ids_count_up_one_by_one() -> None:
    ids = naming.FlowIds(start=0xFFFFFE)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert [ids.new(now)[-6:] for _ in range(3)] == ["fffffe", "ffffff", "000000"]
