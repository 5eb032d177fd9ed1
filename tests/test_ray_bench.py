"""`reasonloom bench --ray`: problems sharded over a local Ray cluster give the same results as
the run without Ray; embedded roles are pointed at one shared server; nothing imports Ray
without --ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reasonloom.bench.datasets import Item
from reasonloom.bench.ray_runner import engine_cli_args, serve_engine_roles, shards
from reasonloom.recipe import Recipe

# Two roles on one served engine (the session's vLLM server), seeded sampling: the run makes
# two generate calls and one score-free vote per problem.
SERVED_RECIPE = """
seed: 0
models:
  strong: {{backend: openai, model: SmolLM2-135M-Instruct, base_url: "{url}",
            price_in_per_m: 0.8, price_out_per_m: 3.2}}
nodes:
  vote:
    type: self_consistency
    params: {{n: 2, temperature: 0.7, max_tokens: 12}}
output: vote
"""


def write_dataset(path: Path, count: int) -> Path:
    with path.open("w") as f:
        for i in range(count):
            f.write(json.dumps({"id": i, "question": f"What is {i} + {i + 1}?",
                                "answer": str(2 * i + 1)}) + "\n")
    return path


def bench(recipe: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "reasonloom.cli.main", "bench", str(recipe),
                           "--dataset", str(data), "--out", str(out), "--concurrency", "4",
                           *extra], capture_output=True, text=True, env=env, timeout=600)


def rows(out: Path) -> dict:
    """Each problem's result without its timings (wall time differs run to run)."""
    found = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        found[row["id"]] = (row["answer_text"], row["answer"], row["correct"], row["status"],
                            row["usage"]["total"], row["usage"]["by_node"])
    return found


@pytest.mark.engine
@pytest.mark.slow
def test_a_ray_run_of_ten_problems_equals_the_run_without_ray(vllm_server, tmp_path):
    pytest.importorskip("ray")
    recipe = tmp_path / "served.yaml"
    recipe.write_text(SERVED_RECIPE.format(url=vllm_server))
    data = write_dataset(tmp_path / "data.jsonl", 10)
    plain = bench(recipe, data, tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-2000:]
    on_ray = bench(recipe, data, tmp_path / "ray", "--ray")
    assert on_ray.returncode == 0, on_ray.stderr[-2000:]
    assert "ray: 2 workers on 1 node(s)" in on_ray.stderr   # both cores of a 2-core machine
    want, got = rows(tmp_path / "plain"), rows(tmp_path / "ray")
    assert len(want) == 10 and all(r[3] == "ok" and r[4]["calls"] >= 1 for r in want.values())
    assert got == want
    summaries = [json.loads((tmp_path / d / "summary.json").read_text())["recipes"]["served"]
                 for d in ("plain", "ray")]
    for key in ("accuracy", "problems", "mean_tokens", "calls", "mean_cost_usd"):
        assert summaries[0][key] == summaries[1][key]


def test_a_bench_without_ray_never_imports_ray(tmp_path):
    recipe = tmp_path / "scripted.yaml"
    recipe.write_text("models: {strong: {backend: scripted}}\n"
                      "nodes: {vote: {type: self_consistency, params: {n: 2}}}\n")
    data = write_dataset(tmp_path / "data.jsonl", 3)
    code = ("import sys\nfrom reasonloom.cli.main import main\n"
            f"rc = main(['bench', {str(recipe)!r}, '--dataset', {str(data)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}])\n"
            "assert rc == 0, rc\nassert 'ray' not in sys.modules, 'ray was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 3


class FakeServer:
    def __init__(self, name: str, engine: dict, count: int):
        self.base_url = f"http://127.0.0.1:{9000 + count}/v1"
        self.name, self.engine, self.stopped = name, engine, False

    def stop(self) -> None:
        self.stopped = True


def test_embedded_roles_share_one_server_and_keep_their_prices(tmp_path):
    recipe = Recipe.from_text("""
models:
  strong: {backend: embedded, engine: {dtype: float32}, price_in_per_m: 0.8, concurrency: 8}
  cheap: {backend: embedded, engine: {dtype: float32}, price_in_per_m: 0.1}
  remote: {backend: openai, model: m, base_url: "http://10.0.0.9:8000/v1"}
nodes:
  vote: {type: self_consistency, params: {n: 2, role: cheap}}
""", "two_roles.yaml")
    launched: list[FakeServer] = []

    def launch(path, name, engine, log):
        launched.append(FakeServer(name, engine, len(launched)))
        return launched[-1]

    served, servers = serve_engine_roles(recipe, tmp_path, launch=launch)
    assert servers == launched and len(launched) == 1          # one engine for both roles
    assert launched[0].engine["dtype"] == "float32"
    assert launched[0].engine["enable_prefix_caching"] is True  # the in-process defaults
    assert launched[0].engine["enable_chunked_prefill"] is False
    models = served.spec.models
    for name, price in (("strong", 0.8), ("cheap", 0.1)):
        assert models[name].backend == "openai" and models[name].base_url == launched[0].base_url
        assert models[name].model == launched[0].name and models[name].price_in_per_m == price
    assert models["strong"].concurrency == 8
    assert models["remote"] == recipe.spec.models["remote"]    # a served role keeps its server
    assert served.name == recipe.name                          # results keep the recipe's name


def test_engine_arguments_become_api_server_flags():
    assert engine_cli_args({"max_model_len": 4096, "enforce_eager": True,
                            "enable_prefix_caching": False, "dtype": "float32",
                            "hf_overrides": {"a": 1}}) == [
        "--max-model-len", "4096", "--enforce-eager", "--no-enable-prefix-caching",
        "--dtype", "float32", "--hf-overrides", '{"a": 1}']


def test_shards_cover_every_problem_once():
    items = [Item(id=i, question="q") for i in range(7)]
    parts = shards(items, 3)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert sorted(it.id for p in parts for it in p) == list(range(7))
    assert shards(items[:1], 4) == [items[:1]]
