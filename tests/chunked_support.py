"""Shared pieces of the chunked node's scripted tests: roles on one backend, a one-node graph,
and key-value records of UUIDs like the benchmark's."""
from __future__ import annotations

import random
import uuid

from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec


def reader_roles(backend, **prices) -> Roles:
    return Roles({"strong": Role(RoleSpec(name="strong", price_in_per_m=1.0,
                                          price_out_per_m=2.0, **prices), backend),
                  "cheap": Role(RoleSpec(name="cheap", price_in_per_m=0.1), backend)},
                 order=["strong", "cheap"])


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
