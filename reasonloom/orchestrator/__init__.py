"""The DAG runtime: types, registry, graph, scheduler, ledger, budget, events, cache."""
