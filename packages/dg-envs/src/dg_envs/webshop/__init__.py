"""WebShop (princeton-nlp/WebShop) from the user's own install; its data cannot be bundled.

See the dg-envs README for what is verified here and what only runs against a real install.
"""

from dg_envs.webshop._env import WebShopEnv, load_webshop_engine, webshop_tasks
from dg_envs.webshop._state import IRREVERSIBLE_CLICKS, split_observation, webshop_state

__all__ = [
    "IRREVERSIBLE_CLICKS",
    "WebShopEnv",
    "load_webshop_engine",
    "split_observation",
    "webshop_state",
    "webshop_tasks",
]
