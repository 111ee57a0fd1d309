"""ALFRED-format ALFWorld games made here: PDDL problems over the domain and grammar the alfworld wheel ships.

The official ALFWorld games come from ALFRED's THOR scenes and cannot be downloaded on every machine.
This module writes games of the same format for the six ALFWorld task types: a room of receptacles
(kitchen, living room, bedroom, bathroom) stocked with objects where ALFRED's placement tables allow
them, ALFRED-style instance ids (``Apple_bar__plus_01_dot_25_bar_...``, which the ALFWorld demangler
turns into ``apple 1``), the goal formula of ALFWorld's goal library, and the ``traj_data.json`` the
handcoded expert reads. The real ALFWorld engine and expert run on them unchanged.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from dg_core import ConfigError, require

__all__ = ["TASK_TYPES", "AlfWorldProblem", "alfworld_module", "make_problem", "write_game"]

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
"""The six ALFWorld task types, in ALFWorld's order (ids 1-6)."""

# Receptacle classes (and how many of each) of the four ALFRED room types.
_ROOMS: dict[str, dict[str, int]] = {
    "Kitchen": {
        "CounterTop": 2, "Cabinet": 4, "Drawer": 3, "Fridge": 1, "Microwave": 1, "SinkBasin": 1,
        "StoveBurner": 2, "DiningTable": 1, "GarbageCan": 1, "Shelf": 1, "CoffeeMachine": 1, "Toaster": 1,
    },
    "LivingRoom": {
        "Sofa": 1, "ArmChair": 1, "CoffeeTable": 1, "SideTable": 2, "Shelf": 2, "Drawer": 2, "Cabinet": 2,
        "GarbageCan": 1, "TVStand": 1, "Dresser": 1,
    },
    "Bedroom": {
        "Bed": 1, "Desk": 1, "SideTable": 2, "Dresser": 1, "Drawer": 3, "Shelf": 2, "GarbageCan": 1,
        "LaundryHamper": 1, "ArmChair": 1, "Safe": 1,
    },
    "Bathroom": {
        "Toilet": 1, "SinkBasin": 1, "Cabinet": 3, "CounterTop": 1, "TowelHolder": 1, "HandTowelHolder": 1,
        "ToiletPaperHanger": 1, "GarbageCan": 1, "Drawer": 2, "BathtubBasin": 1,
    },
}  # fmt: skip

# Objects a task may ask for or scatter around: pickupable, unsliced, and not receptacles themselves.
_OBJECTS = (
    "AlarmClock", "Apple", "BaseballBat", "BasketBall", "Book", "Bowl", "Bread", "ButterKnife", "CD", "Candle",
    "CellPhone", "Cloth", "CreditCard", "Cup", "DishSponge", "Egg", "Fork", "Glassbottle", "HandTowel", "Kettle",
    "KeyChain", "Knife", "Ladle", "Laptop", "Lettuce", "Mug", "Newspaper", "Pan", "PaperTowel", "Pen", "Pencil",
    "PepperShaker", "Pillow", "Plate", "Pot", "Potato", "RemoteControl", "SaltShaker", "SoapBar", "SoapBottle",
    "Spatula", "Spoon", "SprayBottle", "Statue", "TennisRacket", "TissueBox", "ToiletPaper", "Tomato", "Towel",
    "Vase", "Watch", "WateringCan", "WineBottle",
)  # fmt: skip

# Room types of each task type (as in ALFRED) and the receptacle that transforms the object.
_TASK_ROOMS = {
    "pick_and_place_simple": ("Kitchen", "LivingRoom", "Bedroom", "Bathroom"),
    "pick_two_obj_and_place": ("Kitchen", "LivingRoom", "Bedroom", "Bathroom"),
    "look_at_obj_in_light": ("LivingRoom", "Bedroom"),
    "pick_clean_then_place_in_recep": ("Kitchen", "Bathroom"),
    "pick_heat_then_place_in_recep": ("Kitchen",),
    "pick_cool_then_place_in_recep": ("Kitchen",),
}
_TASK_PROPERTY = {
    "pick_clean_then_place_in_recep": ("Cleanable", "SinkBasin"),
    "pick_heat_then_place_in_recep": ("Heatable", "Microwave"),
    "pick_cool_then_place_in_recep": ("Coolable", "Fridge"),
}
_LAMP_RECEPTACLES = ("Desk", "SideTable", "Dresser")


def alfworld_module(name: str = "alfworld") -> ModuleType:
    """Import an ``alfworld`` module or fail with the install command of the extra."""
    return require(name, distribution="dg-envs", extra="alfworld", purpose="The ALFWorld environment")


def _mangle(text: str) -> str:
    for char, word in (("|", "_bar_"), ("+", "_plus_"), ("-", "_minus_"), (".", "_dot_"), (",", "_comma_")):
        text = text.replace(char, word)
    return text


def _coordinate(rng: random.Random) -> str:
    value = rng.uniform(-3.0, 3.0)
    return f"{'+' if value >= 0 else '-'}{abs(value):05.2f}"


def _instance_id(cls: str, rng: random.Random, used: set[str]) -> str:
    # ALFRED names a basin after its fixture: ``Sink|x|y|z|SinkBasin`` (the demangler reads "sinkbasin").
    prefix, suffix = (cls.removesuffix("Basin"), f"|{cls}") if cls.endswith("Basin") else (cls, "")
    while True:
        mangled = _mangle(f"{prefix}|{_coordinate(rng)}|{_coordinate(rng)}|{_coordinate(rng)}{suffix}")
        if mangled not in used:
            used.add(mangled)
            return mangled


@dataclass(frozen=True)
class AlfWorldProblem:
    """One generated game: the PDDL problem and what the expert needs to know about it."""

    task_type: str
    """One of :data:`TASK_TYPES`."""
    room: str
    """ALFRED room type."""
    object_target: str
    """Class of the object to manipulate (``Apple``)."""
    parent_target: str
    """Class of the receptacle to put it in ('' for look_at_obj_in_light)."""
    toggle_target: str
    """Class of the lamp to use ('' unless look_at_obj_in_light)."""
    description: str
    """The task in words (ALFWorld's templates)."""
    pddl_problem: str
    """The PDDL problem text."""


def _valid_receptacles(constants: ModuleType, cls: str, receptacles: dict[str, str]) -> list[str]:
    allowed = constants.VAL_RECEPTACLE_OBJECTS
    return [rid for rid, rcls in receptacles.items() if cls in allowed.get(rcls, ())]


def make_problem(task_type: str, seed: int) -> AlfWorldProblem:
    """Generate a solvable ALFRED-format problem of ``task_type``, fully determined by ``seed``."""
    if task_type not in TASK_TYPES:
        raise ConfigError(f"unknown ALFWorld task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
    constants = alfworld_module("alfworld.gen.constants")
    goals = alfworld_module("alfworld.gen.goal_library").gdict
    rng = random.Random(f"alfworld:{task_type}:{seed}")
    room = rng.choice(_TASK_ROOMS[task_type])
    used: set[str] = set()
    receptacles = {
        _instance_id(cls, rng, used): cls for cls, count in _ROOMS[room].items() for _ in range(count)
    }  # id -> class
    present = set(receptacles.values())
    property_name, tool = _TASK_PROPERTY.get(task_type, ("", ""))
    candidates = []
    for cls in _OBJECTS:
        if property_name and cls not in constants.VAL_ACTION_OBJECTS[property_name]:
            continue
        sources = [rid for rid in _valid_receptacles(constants, cls, receptacles) if receptacles[rid] != tool]
        parents = sorted({receptacles[rid] for rid in sources} - {tool, "GarbageCan"})
        if task_type == "pick_two_obj_and_place":
            in_view = {receptacles[rid] for rid in sources if receptacles[rid] not in constants.OPENABLE_CLASS_LIST}
            parents = [parent for parent in parents if in_view - {parent}]
        if task_type == "look_at_obj_in_light":
            parents = [""]
        for parent in parents:
            if len([rid for rid in sources if receptacles[rid] != parent]) >= 1:
                candidates.append((cls, parent))
    if not candidates:
        raise ConfigError(f"no object fits a {task_type} task in a {room}")  # pragma: no cover - tables fixed
    object_target, parent_target = rng.choice(candidates)
    toggle_target = "DeskLamp" if task_type == "look_at_obj_in_light" else ""

    objects: dict[str, tuple[str, str]] = {}  # id -> (class, receptacle id)
    sources = [
        rid
        for rid in _valid_receptacles(constants, object_target, receptacles)
        if receptacles[rid] not in (parent_target, tool)
    ]
    copies = 2 if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    if task_type == "pick_two_obj_and_place":
        # The handcoded expert loses track of a second copy left behind a door it closed: keep both in view.
        open_sources = [rid for rid in sources if receptacles[rid] not in constants.OPENABLE_CLASS_LIST]
        sources = open_sources or sources
    # Both copies of a pick-two task share a receptacle: the handcoded expert only returns to where it
    # took the first one and otherwise wanders until its step limit.
    shared_source = rng.choice(sources) if task_type == "pick_two_obj_and_place" else None
    for _ in range(copies):
        objects[_instance_id(object_target, rng, used)] = (object_target, shared_source or rng.choice(sources))
    if toggle_target:
        lamp_places = [rid for rid, rcls in receptacles.items() if rcls in _LAMP_RECEPTACLES]
        objects[_instance_id(toggle_target, rng, used)] = (toggle_target, rng.choice(lamp_places))
    distractors = [cls for cls in _OBJECTS if cls != object_target and _valid_receptacles(constants, cls, receptacles)]
    for cls in rng.sample(distractors, k=min(len(distractors), rng.randint(6, 10))):
        places = [rid for rid in _valid_receptacles(constants, cls, receptacles) if receptacles[rid] != parent_target]
        if places:
            objects[_instance_id(cls, rng, used)] = (cls, rng.choice(places))

    locations = {rid: _mangle(f"loc|{rng.randint(-12, 12)}|{rng.randint(-12, 12)}|{rng.randint(0, 3)}|30")
                 for rid in receptacles}  # fmt: skip
    start = _mangle(f"loc|{rng.randint(-12, 12)}|{rng.randint(-12, 12)}|{rng.randint(0, 3)}|15")
    while start in locations.values() or len(set(locations.values())) < len(locations):
        start = start + "0"  # pragma: no cover - collisions are astronomically rare
        locations = {rid: loc + "0" * i for i, (rid, loc) in enumerate(locations.items())}

    # A class is declared once: movable receptacles (bowls, mugs...) are object types, the rest receptacle types.
    # Only the classes in play are declared (grounding time grows with them), plus the ones the domain names.
    # A class is declared once: movable receptacles (bowls, mugs...) are object types.
    receptacle_types = sorted((present | {"SinkBasin", "Microwave", "Fridge"}) - set(constants.MOVABLE_RECEPTACLES))
    object_types = sorted({cls for cls, _ in objects.values()} | {"Knife", "ButterKnife"})
    declarations = ["agent1 - agent"]
    declarations += [f"{cls}Type - otype" for cls in object_types]
    declarations += [f"{cls}Type - rtype" for cls in receptacle_types]
    declarations += [f"{oid} - object" for oid in objects]
    declarations += [f"{rid} - receptacle" for rid in receptacles]
    declarations += [f"{loc} - location" for loc in [start, *locations.values()]]

    facts = [f"(atLocation agent1 {start})"]
    for rid, rcls in receptacles.items():
        facts.append(f"(receptacleType {rid} {rcls}Type)")
        facts.append(f"(receptacleAtLocation {rid} {locations[rid]})")
        if rcls in constants.OPENABLE_CLASS_LIST:
            facts.append(f"(openable {rid})")
    for rcls in sorted(present):
        for cls in sorted(set(constants.VAL_RECEPTACLE_OBJECTS.get(rcls, ())) & set(object_types)):
            facts.append(f"(canContain {rcls}Type {cls}Type)")
    for oid, (cls, rid) in objects.items():
        facts.append(f"(objectType {oid} {cls}Type)")
        facts.append(f"(inReceptacle {oid} {rid})")
        facts.append(f"(objectAtLocation {oid} {locations[rid]})")
        if cls in constants.VAL_ACTION_OBJECTS["Toggleable"]:
            facts.append(f"(toggleable {oid})")
        else:
            facts.append(f"(pickupable {oid})")
        for name, predicate in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable")):
            if cls in constants.VAL_ACTION_OBJECTS[name]:
                facts.append(f"({predicate} {oid})")
        if cls in constants.RECEPTACLES:
            facts.append(f"(isReceptacleObject {oid})")

    goal = goals[task_type]["pddl"].format(obj=object_target, recep=parent_target, toggle=toggle_target)
    goal = goal.replace("#", "-")
    template = rng.choice(goals[task_type]["templates"])
    description = template.format(
        obj=object_target.lower(), recep=parent_target.lower(), toggle=toggle_target.lower(), mrecep=""
    )
    newline = "\n        "
    problem = (
        f"(define (problem dg_{task_type}_{seed})\n    (:domain alfred)\n"
        f"    (:objects\n        {newline.join(declarations)}\n    )\n"
        f"    (:init\n        {newline.join(facts)}\n    )\n{goal}"
    )
    return AlfWorldProblem(task_type, room, object_target, parent_target, toggle_target, description, problem)


def write_game(problem: AlfWorldProblem, folder: str | Path) -> Path:
    """Write ``game.tw-pddl`` and ``traj_data.json`` into ``folder``; return the game file."""
    info = alfworld_module("alfworld.info")
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    grammar = Path(info.ALFRED_TWL2_PATH).read_text().replace("UNKNOWN GOAL", problem.description)
    game: dict[str, Any] = {
        "pddl_domain": Path(info.ALFRED_PDDL_PATH).read_text(),
        "grammar": grammar,
        "pddl_problem": problem.pddl_problem,
        "solvable": True,
        "walkthrough": None,
    }
    traj_data = {
        "task_type": problem.task_type,
        "scene": {"room_type": problem.room, "generator": "dg-envs"},
        "pddl_params": {
            "object_target": problem.object_target,
            "parent_target": problem.parent_target,
            "toggle_target": problem.toggle_target,
            "mrecep_target": "",
            "object_sliced": False,
        },
        "turk_annotations": {"anns": [{"task_desc": problem.description}]},
    }
    (target / "traj_data.json").write_text(json.dumps(traj_data, indent=1))
    game_file = target / "game.tw-pddl"
    scratch = target / "game.tw-pddl.partial"
    scratch.write_text(json.dumps(game))
    scratch.replace(game_file)
    return game_file
