"""WebShop adapter: the observation mapping against WebShop-format pages, and the Env contract on a stand-in shop.

WebShop's product data, search index and spaCy model cannot be installed here, so the engine below is a
two-product stand-in that answers with pages in WebShop's text format (``[SEP]``-joined strings,
lowercase clickables, ``search[...]`` / ``click[...]``), written from WebShop's ``WebAgentTextEnv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dg_core import ConfigError, Task
from dg_core.testing import EnvConformance
from dg_envs.webshop import WebShopEnv, split_observation, webshop_state, webshop_tasks

INSTRUCTION = "i need a long clip-in hair extension which is natural looking, and price lower than 40.00 dollars"
SEARCH_PAGE = f"WebShop [SEP] Instruction: [SEP] {INSTRUCTION} [SEP] Search"
RESULTS_PAGE = (
    f"Instruction: [SEP] {INSTRUCTION} [SEP] Back to Search [SEP] Page 1 (Total results: 2) [SEP] Next > [SEP] "
    "B09QQLDJ93 [SEP] Clip in Hair Extensions, 22 inch natural [SEP] $29.99 [SEP] "
    "B07JN3QN2N [SEP] Synthetic Wig Short Bob [SEP] $45.0"
)
ITEM_PAGE = (
    f"Instruction: [SEP] {INSTRUCTION} [SEP] Back to Search [SEP] < Prev [SEP] color [SEP] natural black [SEP] "
    "dark brown [SEP] Clip in Hair Extensions, 22 inch natural [SEP] Price: $29.99 [SEP] Rating: N.A. [SEP] "
    "Description [SEP] Features [SEP] Reviews [SEP] Buy Now"
)
DONE_PAGE = "Thank you for shopping with us! [SEP] Your code: [SEP] None [SEP] (Paste it in your MTurk interface.)"


class StandInShop:
    """Two products, WebShop's page flow (search -> results -> item -> buy) and its return values."""

    def __init__(self) -> None:
        self.page = "search"
        self.chosen: dict[str, str] = {}
        self.closed = False

    def reset(self, session: int | str | None = None) -> tuple[str, None]:
        self.page, self.chosen = "search", {}
        return SEARCH_PAGE, None

    def get_instruction_text(self) -> str:
        return f"Instruction:  {INSTRUCTION}"

    def get_available_actions(self) -> dict[str, Any]:
        clickables = {
            "search": ["search"],
            "results": ["back to search", "next >", "b09qqldj93", "b07jn3qn2n"],
            "item": ["back to search", "< prev", "natural black", "dark brown", "description", "buy now"],
            "done": [],
        }[self.page]
        return {"has_search_bar": self.page == "search", "clickables": clickables}

    def step(self, action: str) -> tuple[str, float, bool, None]:
        pages = {"search": SEARCH_PAGE, "results": RESULTS_PAGE, "item": ITEM_PAGE, "done": DONE_PAGE}
        if action.startswith("search[") and self.page == "search":
            self.page = "results"
        elif action == "click[back to search]":
            self.page = "search"
        elif action.startswith("click[b0") and self.page == "results":
            self.page, self.chosen = "item", {"asin": action[6:-1]}
        elif action in ("click[natural black]", "click[dark brown]") and self.page == "item":
            self.chosen["color"] = action[6:-1]
        elif action == "click[buy now]" and self.page == "item":
            self.page = "done"
            score = 1.0 if self.chosen == {"asin": "b09qqldj93", "color": "natural black"} else 0.5
            return DONE_PAGE, score, True, None
        return pages[self.page], 0.0, False, None

    def close(self) -> None:
        self.closed = True


class TestWebShopConformanceOnStandIn(EnvConformance):
    fallback_action = "click[back to search]"

    @pytest.fixture
    def make_env(self):  # type: ignore[no-untyped-def]
        return lambda: WebShopEnv(engine=StandInShop(), max_steps=10)

    @pytest.fixture
    def tasks(self) -> list[Task]:
        return webshop_tasks(range(2), split="test")


def test_search_page_is_free_text_with_the_instruction_removed() -> None:
    state = webshop_state(SEARCH_PAGE, {"has_search_bar": True, "clickables": ["search"]}, instruction=INSTRUCTION)
    assert state.available_actions is None
    assert INSTRUCTION not in state.text and "WebShop" not in state.text
    assert state.text.endswith("Actions: search[<query>], click[search]")


def test_item_page_lists_clicks_and_marks_buying_irreversible() -> None:
    clickables = ["back to search", "< prev", "natural black", "dark brown", "description", "buy now"]
    state = webshop_state(ITEM_PAGE, {"has_search_bar": False, "clickables": clickables}, instruction=INSTRUCTION)
    assert state.available_actions == tuple(f"click[{c}]" for c in clickables)
    assert state.irreversible_actions == ("click[buy now]",)
    assert state.info["page"] == "item"
    assert "Price: $29.99" in state.text.splitlines()
    assert split_observation(" a [SEP]  [SEP] b ") == ["a", "b"]


def test_outcome_reward_is_one_only_for_an_exact_purchase() -> None:
    (task,) = webshop_tasks([0])
    with WebShopEnv(engine=StandInShop()) as env:
        env.reset(task)
        for action in ("search[clip in hair extension]", "click[b09qqldj93]", "click[natural black]"):
            assert env.step(action).reward == 0.0
        won = env.step("click[buy now]")
        assert (won.reward, won.done, won.success, won.info["webshop_score"]) == (1.0, True, True, 1.0)
        env.reset(task)
        for action in ("search[wig]", "click[b07jn3qn2n]"):
            env.step(action)
        lost = env.step("click[buy now]")
        assert (lost.reward, lost.success, lost.info["webshop_score"]) == (0.0, False, 0.5)


def test_a_missing_install_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBSHOP_PATH", raising=False)
    with pytest.raises(ConfigError, match="needs webshop_path"):
        WebShopEnv()
    with pytest.raises(ConfigError, match="no web_agent_site/ folder"):
        WebShopEnv(str(tmp_path))
