"""Task configs: WebArena's file format with site URLs from the environment, and open-ended site tasks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dg_core import ConfigError, MissingExtraError, make_env
from dg_envs.web import MiniWoBEnv, WebArenaEnv, demo_shop_tasks, site_task, webarena_site_urls, webarena_tasks

WEBARENA_RECORDS = [
    {
        "task_id": 21,
        "sites": ["shopping"],
        "require_login": True,
        "start_url": "__SHOPPING__/6s-wireless-headphones-over-ear.html",
        "intent": "List out reviewers, if exist, who mention about ear cups being small",
        "intent_template_id": 222,
        "eval": {"eval_types": ["string_match"], "reference_answers": {"must_include": ["Joseph Brzezinski"]}},
    },
    {
        "task_id": 44,
        "sites": ["gitlab", "reddit"],
        "start_url": "__GITLAB__ |AND| __REDDIT__",
        "intent": "Open my todos page",
        "intent_template_id": 303,
    },
]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "test.raw.json"
    path.write_text(json.dumps(WEBARENA_RECORDS))
    return path


def test_webarena_tasks_take_site_urls_from_the_environment(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WA_SHOPPING", "http://10.0.0.5:7770/")
    monkeypatch.setenv("WA_GITLAB", "http://10.0.0.5:8023")
    monkeypatch.setenv("WA_REDDIT", "http://forum.internal:9999")
    tasks = webarena_tasks(config_file)
    assert [task.id for task in tasks] == ["webarena.21", "webarena.44"]
    first = tasks[0]
    assert first.env_id == "webarena"
    assert first.instruction.startswith("List out reviewers")
    assert first.config == {
        "webarena_task_id": 21,
        "start_url": "http://10.0.0.5:7770/6s-wireless-headphones-over-ear.html",
        "allowed_hosts": ["10.0.0.5:7770"],
    }
    assert first.metadata == {"sites": ["shopping"], "intent_template_id": 222}
    assert tasks[1].config["allowed_hosts"] == ["10.0.0.5:8023", "forum.internal:9999"]
    assert tasks[1].config["start_url"] == "http://10.0.0.5:8023 |AND| http://forum.internal:9999"


def test_webarena_tasks_name_the_missing_variable(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for site in ("SHOPPING", "GITLAB", "REDDIT"):
        monkeypatch.delenv(f"WA_{site}", raising=False)
    with pytest.raises(ConfigError, match="needs the URL of shopping: set WA_SHOPPING"):
        webarena_tasks(config_file)
    only = webarena_tasks(config_file, site_urls={"shopping": "http://s:1"}, task_ids=[21])
    assert [task.config["start_url"] for task in only] == ["http://s:1/6s-wireless-headphones-over-ear.html"]


def test_site_urls_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WA_MAP", "http://map:3000")
    monkeypatch.delenv("WA_WIKIPEDIA", raising=False)
    urls = webarena_site_urls({"homepage": "http://home:4399"})
    assert urls["map"] == "http://map:3000"
    assert urls["homepage"] == "http://home:4399"
    assert "wikipedia" not in urls


def test_site_task_validates_checks() -> None:
    task = site_task("t", "Do it", "http://127.0.0.1:5000/start", {"url_contains": "/done"})
    assert task.config["allowed_hosts"] == ["127.0.0.1:5000"]
    with pytest.raises(ConfigError, match="non-empty subset"):
        site_task("t", "Do it", "http://127.0.0.1:5000/", {"title_is": "x"})
    with pytest.raises(ConfigError, match="expected an http"):
        site_task("t", "Do it", "file:///etc/passwd", {"url_contains": "x"})
    assert [t.id for t in demo_shop_tasks("http://127.0.0.1:1/")] == [
        "shop-price-blue-kettle",
        "shop-buy-red-mug",
        "shop-contact-billing",
        "shop-open-oak-tray",
    ]


def test_registered_through_entry_points() -> None:
    env = make_env("webarena", max_steps=5, token_budget=500)
    try:
        assert isinstance(env, WebArenaEnv)
        assert env.token_budget == 500
    finally:
        env.close()
    with pytest.raises(ConfigError, match="token_budget must be at least 50"):
        WebArenaEnv(token_budget=10)


def test_missing_extras_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "browsergym.core", None)  # what an environment without the extra sees
    with pytest.raises(MissingExtraError, match=r'pip install "dg-envs\[web\]"'):
        WebArenaEnv()
    monkeypatch.setitem(sys.modules, "miniwob", None)
    with pytest.raises(MissingExtraError, match=r'pip install "dg-envs\[miniwob\]"'):
        MiniWoBEnv()
    monkeypatch.setitem(sys.modules, "webarena", None)
    with pytest.raises(MissingExtraError, match=r'pip install "dg-envs\[webarena\]"'):
        webarena_tasks()
