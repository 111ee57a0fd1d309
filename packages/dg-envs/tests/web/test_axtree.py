"""AXTree compaction on hand-built trees in Chromium's format (the browser tests use real pages)."""

from __future__ import annotations

from typing import Any

from dg_envs.web import compact_axtree, estimate_tokens


def _node(
    node_id: str,
    role: str,
    name: str = "",
    children: tuple[str, ...] = (),
    *,
    bid: str | None = None,
    ignored: bool = False,
    value: str | None = None,
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "nodeId": node_id,
        "ignored": ignored,
        "role": {"type": "role", "value": role},
        "name": {"type": "computedString", "value": name},
        "childIds": list(children),
        "properties": [{"name": key, "value": {"type": "x", "value": val}} for key, val in (properties or {}).items()],
    }
    if bid is not None:
        node["browsergym_id"] = bid
    if value is not None:
        node["value"] = {"type": "string", "value": value}
    return node


def _shop_page() -> tuple[dict[str, Any], dict[str, Any]]:
    nodes = [
        _node("1", "RootWebArea", "Red Mug", ("2", "3", "9", "20")),
        _node("2", "image", "", bid="a1"),  # decorative: no alt text
        _node("3", "generic", "", ("4", "5", "6"), bid="a2"),
        _node("4", "StaticText", "Price:", ("40",)),
        _node("40", "InlineTextBox", "Price:"),
        _node("5", "strong", "", ("7",), bid="a3"),
        _node("7", "StaticText", "$8.50"),
        _node("6", "generic", "", (), ignored=True),
        _node("9", "form", "", ("10", "11", "12", "13", "14")),
        _node("10", "LabelText", "", ("15",), bid="b1"),
        _node("15", "StaticText", "Quantity"),
        _node("11", "spinbutton", "Quantity", ("16",), bid="b2", value="1", properties={"focusable": True}),
        _node("16", "StaticText", "1"),
        _node("12", "button", "Buy now", ("17",), bid="b3"),
        _node("17", "StaticText", "Buy now"),
        _node("13", "checkbox", "Gift wrap", bid="b4", properties={"checked": "true", "focusable": True}),
        _node("14", "button", "Hidden offer", bid="b5"),
        _node("20", "link", "Delete review", bid="c1", properties={"url": "http://127.0.0.1/x"}),
    ]
    properties = {
        bid: {"bbox": [0, 0, 10, 10], "visibility": 1.0} for bid in ("a1", "a2", "a3", "b1", "b2", "b3", "b4", "c1")
    }
    properties["b5"] = {"bbox": None, "visibility": 0.0}  # not rendered
    return {"nodes": nodes}, properties


def test_keeps_ids_roles_names_values_and_states() -> None:
    tree = compact_axtree(*_shop_page())
    assert tree.text.splitlines() == [
        "Price: $8.50",
        "[b2] spinbutton 'Quantity' value='1'",
        "[b3] button 'Buy now'",
        "[b4] checkbox 'Gift wrap' checked",
        "[c1] link 'Delete review'",
    ]
    assert tree.element_ids == ("b2", "b3", "b4", "c1")
    assert tree.irreversible_ids == ("b3", "c1")
    assert tree.actionable_ids == ("b2", "b3", "b4", "c1")
    assert tree.dropped_lines == 0
    assert tree.tokens == estimate_tokens(tree.text)


def test_token_budget_cuts_text_before_controls() -> None:
    axtree, properties = _shop_page()
    full = compact_axtree(axtree, properties)
    cut = compact_axtree(axtree, properties, token_budget=full.tokens - 3)
    assert "Price: $8.50" not in cut.text
    assert "[b3] button 'Buy now'" in cut.text
    assert cut.dropped_lines == 1
    assert cut.text.endswith(f"(1 lines cut to fit {full.tokens - 3} tokens)")
    tiny = compact_axtree(axtree, properties, token_budget=10)
    assert tiny.dropped_lines >= 4
    assert set(tiny.element_ids) < set(full.element_ids)
    assert set(tiny.irreversible_ids) <= set(tiny.actionable_ids) <= set(tiny.element_ids)


def test_nested_controls_are_indented_and_names_are_quoted() -> None:
    nodes = [
        _node("1", "RootWebArea", "x", ("2",)),
        _node("2", "navigation", "Main", ("3",), bid="n"),
        _node("3", "link", "Bob's page", bid="l"),
    ]
    tree = compact_axtree({"nodes": nodes})
    assert tree.text == "[n] navigation 'Main'\n [l] link 'Bob\\'s page'"
    assert tree.irreversible_ids == ()
    assert tree.element_ids == ("n", "l") and tree.actionable_ids == ("l",)  # a landmark is shown, not clicked


def test_empty_tree() -> None:
    assert compact_axtree({"nodes": []}).text == "(empty page)"
