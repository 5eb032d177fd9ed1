"""The long-context benchmark's generated items: seeded, the kv files' layout, and a second
task whose answer needs two records of the document."""
from __future__ import annotations

import json

import pytest

from benchmarks.long_context_tasks import generated_kv, load_items, two_hop


def _object(item: dict) -> dict:
    return json.loads(item["context"].removeprefix("JSON data:\n"))


@pytest.mark.parametrize("length", [1000, 4000, 16000])
def test_two_hop_answers_need_the_asked_record_and_the_one_it_names(length):
    item = two_hop(length, 7)
    records = _object(item)
    assert len(records) == length // 50                   # the kv files' size (kv_1000: 20)
    asked = item["input"].split('"')[1]
    second = records[asked]
    assert second in records and second != asked          # the value is another key
    assert item["answer"] == records[second] != second
    assert item["answer"] not in item["input"]
    first, then = item["positions"]
    assert list(records)[first] == asked and list(records)[then] == second


def test_generated_items_are_seeded_and_differ_between_items_and_seeds():
    assert two_hop(4000, 3) == two_hop(4000, 3)
    assert two_hop(4000, 3)["context"] != two_hop(4000, 4)["context"]
    assert two_hop(4000, 3, seed=1)["answer"] != two_hop(4000, 3)["answer"]
    kv = generated_kv(16000, 2)
    assert kv == generated_kv(16000, 2) and _object(kv)[kv["input"].split('"')[1]] == kv["answer"]


def test_a_length_without_a_kv_file_is_generated_in_the_files_format(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLOOM_DATA", str(tmp_path))
    items = load_items("kv", 16000, 3)
    assert [i["id"] for i in items] == [0, 1, 2] and all(i["generated"] for i in items)
    assert all(len(_object(i)) == 320 for i in items)
    assert items[0]["input"].startswith('\nKey: "') and items[0]["input"].endswith("is: ")
