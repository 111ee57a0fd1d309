"""WebArenaEnv on real Chromium against the demo shop: conformance, tasks won, safety, crash recovery."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator

import pytest

from dg_core import EnvError, Task
from dg_core.testing import EnvConformance
from dg_envs.web import DemoShop, WebArenaEnv, browser_processes, demo_shop_tasks, site_task

from .conftest import element_id

pytestmark = pytest.mark.browser


def _env(**overrides: object) -> WebArenaEnv:
    settings: dict[str, object] = {
        "max_steps": 8,
        "pre_observation_delay_s": 0.1,
        "slow_mo_ms": 0,
        "step_timeout_s": 30.0,
    }
    settings.update(overrides)
    return WebArenaEnv(**settings)  # type: ignore[arg-type]


@pytest.fixture
def env() -> Iterator[WebArenaEnv]:
    web_env = _env()
    yield web_env
    web_env.close()


class TestWebArenaConformance(EnvConformance):
    fallback_action = "scroll(0, 200)"

    @pytest.fixture
    def make_env(self) -> Callable[[], WebArenaEnv]:
        return lambda: _env(max_steps=3)

    @pytest.fixture
    def tasks(self, shop: DemoShop) -> list[Task]:
        return demo_shop_tasks(shop.url)[:2]


def _task(shop: DemoShop, task_id: str) -> Task:
    return next(task for task in demo_shop_tasks(shop.url) if task.id == task_id)


def test_buy_two_mugs_through_list_detail_and_form(env: WebArenaEnv, shop: DemoShop) -> None:
    orders_before = len(shop.records()["orders"])
    state = env.reset(_task(shop, "shop-buy-red-mug"))
    assert state.text.startswith(f"Page: Tiny Shop ({shop.url})")
    state = env.step(f'click("{element_id(state, "link", "All products")}")').state
    assert "$24.99" in state.text
    state = env.step(f'click("{element_id(state, "link", "Red Mug")}")').state
    quantity = element_id(state, "spinbutton", "Quantity")
    assert f"[{quantity}] spinbutton 'Quantity' value='1'" in state.text
    buy, delete = element_id(state, "button", "Buy now"), element_id(state, "button", "Delete review")
    assert set(state.irreversible_actions) == {f'click("{buy}")', f'click("{delete}")'}
    result = env.step(f'fill("{quantity}", "2")')
    assert "value='2'" in result.state.text and not result.done
    result = env.step(f'click("{buy}")')
    assert result.done and result.success is True and result.reward == 1.0
    assert "Order confirmed: Red Mug x 2." in result.state.text
    assert shop.records()["orders"][orders_before:] == [{"slug": "red-mug", "qty": "2"}]
    trajectory = env.trajectory()
    assert trajectory.success and trajectory.num_steps == 4


def test_contact_form_with_select_and_textbox(env: WebArenaEnv, shop: DemoShop) -> None:
    state = env.reset(_task(shop, "shop-contact-billing"))
    env.step(f'fill("{element_id(state, "textbox", "Your name")}", "Ada")')
    state = env.step(f'select_option("{element_id(state, "combobox", "Topic")}", "Billing")').state
    assert "combobox 'Topic' value='Billing'" in state.text
    state = env.step(f'check("{element_id(state, "checkbox", "Send me a copy")}")').state
    assert "checkbox 'Send me a copy' checked" in state.text
    result = env.step(f'click("{element_id(state, "button", "Submit")}")')
    assert result.success is True
    assert shop.records()["messages"][-1] == {"name": "Ada", "topic": "Billing", "message": "", "copy": "on"}


def test_search_and_answer(env: WebArenaEnv, shop: DemoShop) -> None:
    task = _task(shop, "shop-price-blue-kettle")
    state = env.reset(task)
    env.step(f'fill("{element_id(state, "textbox", "Search")}", "kettle")')
    state = env.step(f'click("{element_id(state, "button", "Go")}")').state
    assert "Results for kettle" in state.text and "Red Mug" not in state.text
    state = env.step(f'click("{element_id(state, "link", "Blue Kettle")}")').state
    assert "Price: $24.99" in state.text
    result = env.step('send_msg_to_user("It costs $24.99.")')
    assert result.done and result.success is True
    env.reset(task)
    wrong = env.step('send_msg_to_user("About ten dollars.")')
    assert wrong.done and wrong.success is False and wrong.reward == 0.0


def test_invalid_actions_are_answered_without_the_browser(env: WebArenaEnv, shop: DemoShop) -> None:
    state = env.reset(_task(shop, "shop-open-oak-tray"))
    for action in ['click("12"', "rm -rf /", '__import__("os")', 'click("no-such-id")', "tab_focus(1)"]:
        result = env.step(action)
        assert result.reward == 0.0 and not result.done
        assert result.info["invalid_action"] is True
        assert result.state == state
        assert str(result.info["feedback"]).startswith("Invalid action:")
    assert env.trajectory().metadata["invalid_actions"] == 5
    result = env.step(f'click("{element_id(state, "link", "Oak Tray")}")')
    assert result.success is True


def test_leaving_the_allowed_hosts_ends_the_episode(env: WebArenaEnv, shop: DemoShop) -> None:
    task = _task(shop, "shop-open-oak-tray")
    env.reset(task)
    result = env.step('goto("https://example.com/")')
    assert result.done and result.success is False
    assert result.info["left_allowed_hosts"] == "https://example.com/"
    state = env.reset(task)
    result = env.step(f'click("{element_id(state, "link", "Partner site")}")')  # links to localhost, not 127.0.0.1
    assert result.done and result.success is False
    assert str(result.info["left_allowed_hosts"]).startswith("http://localhost:")
    state = env.reset(task)
    result = env.step(f'goto("{shop.url}product/oak-tray")')
    assert result.success is True


def test_state_is_compact(env: WebArenaEnv, shop: DemoShop) -> None:
    task = site_task("detail", "Look at the mug.", shop.url + "product/red-mug", {"url_contains": "/never"})
    state = env.reset(task)
    assert state.info["raw_axtree_tokens"] > 2 * state.info["axtree_tokens"]
    assert "InlineTextBox" not in state.text and "StaticText" not in state.text
    assert "summer sale draft" not in state.text  # display:none
    assert "image" not in state.text  # decorative


def test_browser_killed_mid_episode_fails_the_episode_and_recovers(shop: DemoShop, no_leftover_browsers: None) -> None:
    env = _env()
    try:
        task = _task(shop, "shop-open-oak-tray")
        state = env.reset(task)
        assert len(env.browser_pids) == 2  # the page's browser and BrowserGym's chat window
        for pid in env.browser_pids:
            os.kill(pid, signal.SIGKILL)
        result = env.step(f'click("{element_id(state, "link", "Oak Tray")}")')
        assert result.done and result.success is False and result.reward == 0.0
        assert "browser_crashed" in result.info
        assert "The browser crashed" in result.state.text
        assert env.browser_restarts == 1
        state = env.reset(task)  # a fresh browser
        assert env.step(f'click("{element_id(state, "link", "Oak Tray")}")').success is True
    finally:
        env.close()
    assert [pid for pid in browser_processes() if pid in env.browser_pids] == []


def test_hung_browser_is_killed_after_the_step_timeout(shop: DemoShop, no_leftover_browsers: None) -> None:
    env = _env(step_timeout_s=3.0)
    try:
        task = _task(shop, "shop-open-oak-tray")
        state = env.reset(task)
        for pid in env.browser_pids:
            os.kill(pid, signal.SIGSTOP)
        result = env.step(f'click("{element_id(state, "link", "Oak Tray")}")')
        assert result.done and result.success is False
        assert "browser_crashed" in result.info
        assert env.browser_pids == []
        state = env.reset(task)
        assert env.step(f'click("{element_id(state, "link", "Oak Tray")}")').success is True
    finally:
        env.close()


def test_close_leaves_no_browser(shop: DemoShop, no_leftover_browsers: None) -> None:
    env = _env()
    env.reset(_task(shop, "shop-open-oak-tray"))
    assert env.browser_pids
    env.close()
    assert env.browser_pids == []


def test_stepping_from_another_thread_is_refused_clearly(env: WebArenaEnv, shop: DemoShop) -> None:
    env.reset(_task(shop, "shop-open-oak-tray"))
    errors: list[BaseException] = []

    def step() -> None:
        try:
            env.step("scroll(0, 100)")
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=step)
    worker.start()
    worker.join()
    assert len(errors) == 1 and isinstance(errors[0], EnvError)
    assert "one Playwright instance" in str(errors[0])
    assert not env.step("scroll(0, 100)").done  # the owning thread goes on
