"""Shared pieces of the chunked node's scripted tests: roles on one backend, a one-node graph,
and key-value records of UUIDs like the benchmark's."""
from __future__ import annotations

import random
import uuid

from reasonloom.orchestrator.context import RunContext, RunState
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec


def reader_roles(backend, **prices) -> Roles:
    return Roles({"strong": Role(RoleSpec(name="strong", price_in_per_m=1.0,
                                          price_out_per_m=2.0, **prices), backend),
                  "cheap": Role(RoleSpec(name="cheap", price_in_per_m=0.1), backend)},
                 order=["strong", "cheap"])


def reading_context(backend) -> tuple[RunContext, Role]:
    """A node's context outside a run, and one role on `backend` (to cut documents)."""
    roles = reader_roles(backend)
    return RunContext(RunState(run_id="t", seed=0, roles=roles), "reader"), roles.pick("cheap")


def chunked_graph(**params) -> Graph:
    g = Graph()
    g.add("reader", "chunked", params, {"problem": "problem"})
    g.set_output("reader")
    return g


def uuid_of(i: int) -> str:
    return str(uuid.UUID(int=random.Random(i).getrandbits(128)))


KEYS = [uuid_of(i) for i in range(3)]
KEY, GOLD = uuid_of(10), uuid_of(11)
VALUES = {**{k: uuid_of(20 + i) for i, k in enumerate(KEYS)}, KEY: GOLD}


def json_line(keys: list[str]) -> str:
    return "{" + ", ".join(f'"{k}": "{VALUES[k]}"' for k in keys) + "}"


def lines_document(n_lines: int, needle_line: int, code: str = "7391") -> str:
    """Numbered filler lines, one of which holds the secret code."""
    lines = [f"Line {i}: the weather was mild and nothing happened." for i in range(n_lines)]
    lines[needle_line] = f"Line {needle_line}: the secret code is {code}."
    return "\n".join(lines)
