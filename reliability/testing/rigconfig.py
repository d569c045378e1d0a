"""A reliability config for a rig balancer's fleet, as rig tests, benches and the daemon
rig write it: one builder instead of a copy per test file.

``rig_config`` writes ``DIRECTORY/reliability.yaml``: the fleet's ``ssh`` and ``nodes``
sections (roles by node name, the ``rig_lb`` layout unless told; the balancer has no GPUs),
a SQLite database in the directory (migrated unless told not to), service ``chat`` over
pools blue and green (blue active) behind the balancer, running vLLM; keyword arguments add
or replace the service's fields and the config's top-level sections.
``shipped_runbooks`` copies the repository's runbooks with edits (a soak shortened);
``run_runbook`` runs one on the rig as `reliability runbook run --yes` would.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from reliability import db
from reliability.config import Config
from reliability.runbooks import flows
from reliability.runbooks import params as params_mod
from reliability.runbooks.executor import Progress, RunResult
from reliability.runbooks.load import load_runbooks
from reliability.testing.balancer import RigBalancer
from reliability.testing.inference import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[2]
RIG_LB_ROLES = {"spare-1": "standby", "lb-1": "lb"}  # every other node serves


def rig_config(
    balancer: RigBalancer,
    directory: Path,
    *,
    service: Mapping[str, Any] | None = None,
    roles: Mapping[str, str] = RIG_LB_ROLES,
    gpus: bool = True,
    migrate: bool = True,
    **sections: Any,
) -> Path:
    """The config's path; ``gpus=False``: no node has GPUs (a test about reachability,
    with the GPU rules quiet)."""
    fleet = balancer.fleet.config_sections()
    for node in fleet["nodes"]:
        node["role"] = roles.get(node["name"], "serving")
        if node["role"] == "lb" or not gpus:
            node["gpus"] = 0
    url = f"sqlite:///{directory / 'reliability.db'}"
    config = {
        "database": {"url": url},
        **fleet,
        "services": [
            {
                "name": "chat",
                "pools": ["blue", "green"],
                "active_pool": "blue",
                "container": {"name": "vllm", "args": ["--model", DEFAULT_MODEL]},
                "load_balancer": balancer.lb_config("chat"),
                **(service or {}),
            }
        ],
        "runbooks_dir": str(REPO / "runbooks"),
        **sections,
    }
    path = directory / "reliability.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    if migrate:
        db.upgrade(url)
    return path


def shipped_runbooks(directory: Path, edits: Mapping[str, str], pattern: str = "*.yaml") -> Path:
    """``directory/runbooks``: the shipped runbooks matching ``pattern``, each ``old`` in
    ``edits`` replaced by its ``new``; for ``runbooks_dir``."""
    books = directory / "runbooks"
    books.mkdir(exist_ok=True)
    for source in (REPO / "runbooks").glob(pattern):
        text = source.read_text()
        for old, new in edits.items():
            text = text.replace(old, new)
        (books / source.name).write_text(text)
    return books


def run_runbook(
    config: Config, name: str, progress: Progress | None = None, **given: str
) -> RunResult:
    """The config's runbook ``name`` run with the parameters ``given``, every confirmation
    answered yes, by actor ``test``."""
    book = load_runbooks(config)[name]
    values = params_mod.resolve(book, given, config)
    runner = flows.executor(
        config,
        db.make_engine(config.database_url()),
        confirm=lambda prompt: True,
        progress=progress,
    )
    try:
        return runner.run(book, values, actor="test")
    finally:
        runner.close()
