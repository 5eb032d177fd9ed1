"""The long-context benchmark's items: key-value retrieval (the shared `kv_{L}.jsonl` files, or
generated in their format where no file exists, e.g. L = 16000) and a second task generated
here, seeded: a two-hop lookup in the same kind of document.

Both are a JSON object of L/50 UUID keys and values (the kv files' layout: `kv_1000` holds 20
records, `kv_8000` 160; about 1.4 SmolLM2 tokens per unit of L). In the two-hop task the asked
key's value is itself a key of the object, at another, independently drawn place, and the
answer is THAT key's value: a reader has to find two records, usually in different chunks.
"""
from __future__ import annotations

import json
import random
import uuid

from benchmarks._common import data_dir

RECORDS_PER_LENGTH = 50      # kv_L holds L // 50 records
KV_QUESTION = '\nKey: "{key}"\nThe value associated with the specified key is: '
TWO_HOP_QUESTION = ('\nKey: "{key}"\nThe value associated with this key is itself a key of '
                    'the JSON object. The value associated with that second key is: ')
INSTRUCTIONS = {
    "kv": "Extract the value corresponding to the specified key in the JSON object below.",
    "second": "Look up the specified key in the JSON object below; its value is another key of "
              "the object: give the value of that second key.",
}
TASKS = {"kv": "key-value retrieval", "second": "two-hop key-value lookup (generated, seeded)"}


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _record_document(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    keys = [_uuid(rng) for _ in range(n)]
    return keys, [_uuid(rng) for _ in range(n)]


def _context(keys: list[str], values: list[str]) -> str:
    return "JSON data:\n" + json.dumps(dict(zip(keys, values)))


def generated_kv(length: int, index: int, seed: int = 0) -> dict:
    """One key-value item in the kv files' format (for lengths without a file)."""
    rng = random.Random(f"kv/{seed}/{length}/{index}")
    keys, values = _record_document(rng, length // RECORDS_PER_LENGTH)
    asked = rng.randrange(len(keys))
    return {"id": index, "context": _context(keys, values),
            "input": KV_QUESTION.format(key=keys[asked]), "answer": values[asked],
            "generated": True}


def two_hop(length: int, index: int, seed: int = 0) -> dict:
    """One two-hop item: value(A) = B, a key elsewhere in the object; the answer is value(B).
    `first_hop` (B) is kept to tell an answer that stopped after one record."""
    rng = random.Random(f"two_hop/{seed}/{length}/{index}")
    keys, values = _record_document(rng, length // RECORDS_PER_LENGTH)
    first, second = rng.sample(range(len(keys)), 2)
    values[first] = keys[second]
    return {"id": index, "context": _context(keys, values),
            "input": TWO_HOP_QUESTION.format(key=keys[first]), "answer": values[second],
            "first_hop": keys[second], "positions": [first, second]}


def load_items(task: str, length: int, n: int, seed: int = 0) -> list[dict]:
    """n items: kv from its file, spread evenly over it (the files are ordered by the key's
    position; `seed` shifts the picks, so seed 1 gives other rows than seed 0), or generated;
    the second task generated."""
    if task == "second":
        return [two_hop(length, i, seed) for i in range(n)]
    path = data_dir() / f"kv_{length}.jsonl"
    if not path.exists():
        return [generated_kv(length, i, seed) for i in range(n)]
    rows = [json.loads(line) for line in path.open()]
    step = max(1, len(rows) // n)
    return rows[seed % step::step][:n]
