"""Seeds come from logical call keys, never from completion order."""
from __future__ import annotations

import hashlib


def derive_seed(run_seed: int, node: str, call_key: str, sample_index: int = 0) -> int:
    """A 31-bit seed = hash(run seed, node, call key, sample index)."""
    raw = f"{run_seed}\x1f{node}\x1f{call_key}\x1f{sample_index}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") & 0x7FFFFFFF
