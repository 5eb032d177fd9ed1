"""The node types reasonloom ships: importing a module registers its nodes (`register_node`).

The orchestrator's registry loads this module through the `reasonloom.nodes` entry point
(pyproject.toml), so it never names a strategy itself and the layering check
(tests/test_layers.py) sees every import here. A new node type is one line below."""
from __future__ import annotations

import reasonloom.strategies.adaptive_consistency  # noqa: F401
import reasonloom.strategies.beam_search  # noqa: F401
import reasonloom.strategies.chunked  # noqa: F401
import reasonloom.strategies.deepconf  # noqa: F401
import reasonloom.strategies.evolve  # noqa: F401
import reasonloom.strategies.moa  # noqa: F401
import reasonloom.strategies.particle_filter  # noqa: F401
import reasonloom.strategies.sampling  # noqa: F401
import reasonloom.strategies.tournament  # noqa: F401
import reasonloom.verifiers.weaver  # noqa: F401
