"""Rollouts as tensors: the scoring rows the model re-reads and the *units* that carry the loss.

A unit is one generated token (generate mode) or one choice among the available actions (choose mode).
Units are laid out ``[episodes, units]`` so the losses aggregate per token or per episode. Scoring rows
are ``prompt + completion`` (generate: one per turn; choose: one per candidate action) with the ids
recorded at rollout time. Only completion positions are ever read back: prompt and environment tokens
carry no loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dg_core import ConfigError
from dg_rl._rollout import Rollouts
from dg_rl._scoring import PackedRows, pack_rows

__all__ = ["RolloutBatch", "build_batch", "packed_rows", "scatter_units", "stats_keys"]

RolloutBatch = dict[str, Tensor]
"""Tensors of one batch; the keys are listed in :func:`build_batch`."""


def build_batch(rollouts: Rollouts, *, mode: str, pad_id: int) -> RolloutBatch:
    """Pack ``rollouts`` into tensors.

    Keys: ``prompt_ids``, ``prompt_mask``, ``row_prompt``, ``completion_ids``, ``completion_lengths`` (scoring
    rows, see :class:`~dg_rl.PackedRows`: each distinct prompt once);
    ``unit_row``, ``unit_token`` (where each unit is read: row and completion offset; choose mode reads
    turn ``unit_row``), ``unit_episode``, ``unit_col``, ``unit_turn`` (where it goes); choose mode adds
    ``row_turn``, ``row_slot`` and ``turn_chosen``; ``old_logprobs`` and ``unit_mask`` ``[E, U]``;
    ``turn_episode``, ``turn_col``, ``turn_reward``, ``turn_value_row`` (per turn); ``episode_return``,
    ``episode_group``, ``episode_success``; ``stats`` (a 1-D tensor of rollout statistics, see
    ``stats_keys``).

    Args:
        rollouts: What the engine collected.
        mode: The policy's action mode (``"choose"`` or ``"generate"``).
        pad_id: Padding token id.
    """
    prompts: list[list[int]] = []
    completions: list[list[int]] = []
    unit_row: list[int] = []
    unit_token: list[int] = []
    unit_episode: list[int] = []
    unit_col: list[int] = []
    unit_turn: list[int] = []
    old: list[float] = []
    row_turn: list[int] = []
    row_slot: list[int] = []
    turn_chosen: list[int] = []
    turn_episode: list[int] = []
    turn_col: list[int] = []
    turn_reward: list[float] = []
    turn_value_row: list[int] = []
    turn_id = 0
    for episode_index, episode in enumerate(rollouts.episodes):
        col = 0
        for turn_index, turn in enumerate(episode.turns):
            decision = turn.decision
            turn_episode.append(episode_index)
            turn_col.append(turn_index)
            turn_reward.append(turn.reward)
            turn_value_row.append(len(prompts))
            if mode == "choose":
                if decision.chosen < 0:
                    raise ConfigError("a choose-mode batch needs choose-mode decisions")
                for slot, candidate in enumerate(decision.candidates):
                    prompts.append(decision.prompt_ids)
                    completions.append(candidate)
                    row_turn.append(turn_id)
                    row_slot.append(slot)
                turn_chosen.append(decision.chosen)
                unit_row.append(turn_id)
                unit_token.append(-1)
                unit_episode.append(episode_index)
                unit_col.append(col)
                unit_turn.append(turn_id)
                old.append(decision.logprobs[0])
                col += 1
            else:
                row = len(prompts)
                prompts.append(decision.prompt_ids)
                completions.append(decision.completion_ids)
                for offset, logprob in enumerate(decision.logprobs):
                    unit_row.append(row)
                    unit_token.append(offset)
                    unit_episode.append(episode_index)
                    unit_col.append(col)
                    unit_turn.append(turn_id)
                    old.append(logprob)
                    col += 1
            turn_id += 1
    if not prompts:
        raise ConfigError("the rollouts hold no policy turn to train on")
    rows = pack_rows(prompts, completions, pad_id=pad_id, device=torch.device("cpu"))
    episodes = len(rollouts.episodes)
    units = max(unit_col) + 1 if unit_col else 1
    long = torch.long
    batch: RolloutBatch = {
        "prompt_ids": rows.prompt_ids,
        "prompt_mask": rows.prompt_mask,
        "row_prompt": rows.row_prompt,
        "completion_ids": rows.completion_ids,
        "completion_lengths": rows.completion_lengths,
        "unit_row": torch.tensor(unit_row, dtype=long),
        "unit_token": torch.tensor(unit_token, dtype=long),
        "unit_episode": torch.tensor(unit_episode, dtype=long),
        "unit_col": torch.tensor(unit_col, dtype=long),
        "unit_turn": torch.tensor(unit_turn, dtype=long),
        "turn_episode": torch.tensor(turn_episode, dtype=long),
        "turn_col": torch.tensor(turn_col, dtype=long),
        "turn_reward": torch.tensor(turn_reward, dtype=torch.float32),
        "turn_value_row": torch.tensor(turn_value_row, dtype=long),
        "episode_return": torch.tensor([e.episode_return for e in rollouts.episodes], dtype=torch.float32),
        "episode_group": torch.tensor([e.group for e in rollouts.episodes], dtype=long),
        "episode_success": torch.tensor([float(e.success) for e in rollouts.episodes]),
        "stats": torch.tensor([rollouts.stats.as_dict()[key] for key in stats_keys()], dtype=torch.float64),
    }
    batch["old_logprobs"] = scatter_units(torch.tensor(old), batch, episodes, units)
    batch["unit_mask"] = scatter_units(torch.ones(len(old)), batch, episodes, units)
    if mode == "choose":
        batch["row_turn"] = torch.tensor(row_turn, dtype=long)
        batch["row_slot"] = torch.tensor(row_slot, dtype=long)
        batch["turn_chosen"] = torch.tensor(turn_chosen, dtype=long)
    return batch


def packed_rows(batch: RolloutBatch) -> PackedRows:
    """The scoring rows of ``batch``."""
    return PackedRows(
        prompt_ids=batch["prompt_ids"],
        prompt_mask=batch["prompt_mask"],
        row_prompt=batch["row_prompt"],
        completion_ids=batch["completion_ids"],
        completion_lengths=batch["completion_lengths"],
    )


def stats_keys() -> list[str]:
    """Order of the values in ``batch["stats"]``."""
    from dg_rl._rollout import RolloutStats

    return list(RolloutStats().as_dict())


def scatter_units(values: Tensor, batch: RolloutBatch, episodes: int, units: int) -> Tensor:
    """Lay flat per-unit ``values`` out as ``[episodes, units]`` (zeros where an episode has fewer)."""
    out = values.new_zeros((episodes, units))
    return out.index_put((batch["unit_episode"], batch["unit_col"]), values)
