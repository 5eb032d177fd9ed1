"""Per-node views that explain a decision, built from the node's stored outputs and events:
the candidates and their votes, V1's comparisons, Weaver's label model, Squeeze Evolve's loops,
MoA's proposals and re-prompts, the chunked workers' reports. Each returns plain data for
the template (and inline SVG charts)."""
from __future__ import annotations

from collections import Counter
from typing import Any

from reasonloom.report.charts import bars_svg, loops_svg
from reasonloom.strategies.tournament import comparison_weight
from reasonloom.verifiers.answers import canonical

PAIRWISE = {"v1_tournament", "round_robin"}


def candidate_rows(candidates: list[dict]) -> list[dict[str, Any]]:
    """One row per candidate: who wrote it, its extracted answer, the votes that answer got
    among these candidates, its score."""
    keys = [canonical(c["answer"]) if c.get("answer") is not None else None for c in candidates]
    votes = Counter(k for k in keys if k is not None)
    return [{"index": c.get("details", {}).get("input_index", i), "rank": i,
             "role": c.get("role") or "", "answer": c.get("answer"),
             "votes": votes[k] if k is not None else 0, "score": c.get("score"),
             "text": c.get("text", ""), "details": c.get("details", {})}
            for i, (c, k) in enumerate(zip(candidates, keys))]


def _verdict(first: int, second: int, ra: float | None, rb: float | None) -> str:
    if ra is None or rb is None:
        return "unparsed"
    if ra == rb:
        return "tie"
    return f"#{first} wins" if ra > rb else f"#{second} wins"


def tournament_view(answer: dict) -> dict[str, Any]:
    """V1: who met whom (shown first / second), the ratings, the verdict and its weight, and
    each candidate's weighted win rate (its score)."""
    d = answer.get("details", {})
    rows = []
    for k, (first, second, ra, rb) in enumerate(d.get("log", [])):
        weight = None if ra is None or rb is None else comparison_weight(ra, rb)
        rows.append({"k": k + 1, "first": first, "second": second, "rating_first": ra,
                     "rating_second": rb, "verdict": _verdict(first, second, ra, rb),
                     "weight": weight})
    by_index = sorted(candidate_rows(answer.get("candidates", [])), key=lambda r: r["index"])
    chosen = d.get("index")
    chart = bars_svg([f"#{r['index']}" for r in by_index],
                     {"weighted win rate": [r["score"] or 0.0 for r in by_index]},
                     "weighted win rate", highlight=chosen) if by_index else ""
    facts = {k: d.get(k) for k in ("comparisons", "budget", "rounds", "unparsed",
                                   "order_inconsistency", "fell_back_to_vote") if k in d}
    return {"kind": "tournament", "comparisons": rows, "chosen": chosen, "chart": chart,
            "facts": facts, "degree": d.get("degree", [])}


def weaver_view(answer: dict) -> dict[str, Any]:
    """Weaver: each verifier's raw score per candidate, which verifiers the yes-rate filter
    kept, the fitted TPR / FPR and prior, and each candidate's posterior P(correct)."""
    d = answer.get("details", {})
    model = d.get("label_model") or {}
    names = list(model.get("names", []))
    rates = [{"name": n, "tpr": t, "fpr": f} for n, t, f in
             zip(names, model.get("tpr", []), model.get("fpr", []))]
    cands = sorted(candidate_rows(answer.get("candidates", [])), key=lambda r: r["index"])
    verifiers = list(dict.fromkeys(v for r in cands for v in
                                   r["details"].get("verifier_scores", {})))
    chart = bars_svg(names, {"TPR": [r["tpr"] for r in rates],
                             "FPR": [r["fpr"] for r in rates]}, "rate") if rates else ""
    return {"kind": "weaver", "rates": rates, "prior": model.get("prior"),
            "iterations": model.get("iterations"), "kept": d.get("kept", []),
            "yes_rate": d.get("yes_rate", {}), "verifiers": verifiers, "candidates": cands,
            "chosen": d.get("index"), "chart": chart}


def evolve_view(answer: dict) -> dict[str, Any]:
    """Squeeze Evolve: per loop, each group's members, fitness (the scorer's confidence, or
    the diversity fallback) and the role it was routed to; recombinations per role."""
    d = answer.get("details", {})
    loops = d.get("loops", [])
    routing = d.get("routing", {})
    table = []
    for rec in loops[1:]:
        fitness = rec.get("fitness") or [None] * len(rec.get("groups", []))
        table.append({"loop": rec["loop"], "kind": rec.get("fitness_kind"),
                      "thresholds": rec.get("thresholds", []),
                      "groups": [{"g": g, "members": members, "fitness": f, "route": route}
                                 for g, (members, f, route) in
                                 enumerate(zip(rec.get("groups", []), fitness,
                                               rec.get("routes", [])))]})
    scored = any(rec.get("fitness") for rec in loops)
    chart = loops_svg(loops, list(routing)) if scored else ""
    first = loops[0]["routes"][0] if loops and loops[0].get("routes") else None
    return {"kind": "evolve", "loops": table, "routing": routing, "initial_role": first,
            "population": len(loops[0].get("routes", [])) if loops else 0, "chart": chart,
            "votes": d.get("votes")}


def moa_view(answer: dict) -> dict[str, Any]:
    """MoA: each proposal (layer, proposer) and, in staircase mode, every aggregator call:
    first, re-prompt (the prompt now shows more of the proposals) or continue."""
    d = answer.get("details", {})
    segments = d.get("segments", [])
    return {"kind": "moa", "mode": d.get("mode"), "reprompts": d.get("reprompts"),
            "segments": segments, "started_s": d.get("aggregator_started_s"),
            "full": d.get("final_prompt_saw_full_proposals")}


def chunked_view(answer: dict) -> dict[str, Any]:
    """Chunked reading: each worker's chunk, report, whether its evidence was found in the
    text, and which reports reached the manager."""
    d = answer.get("details", {})
    shown = set(d.get("shown", []))
    workers = [{"chunk": c.get("details", {}).get("chunk", i),
                "span": c.get("details", {}).get("span"),
                "found": c.get("details", {}).get("found"),
                "verdict": c.get("details", {}).get("verdict"), "report": c.get("text", ""),
                "shown": c.get("details", {}).get("chunk", i) in shown}
               for i, c in enumerate(answer.get("candidates", []))]
    return {"kind": "chunked", "mode": d.get("mode"), "workers": workers,
            "document_tokens": d.get("document_tokens"), "manager_text": d.get("manager_text"),
            "answered_by": d.get("answered_by"), "left_out": d.get("left_out")}


def explain(node_type: str, answer: dict | None) -> dict[str, Any] | None:
    """The strategy-specific view of a node, where it has one."""
    if not answer:
        return None
    if node_type in PAIRWISE:
        return tournament_view(answer)
    if node_type == "weaver":
        return weaver_view(answer)
    if node_type == "evolve":
        return evolve_view(answer)
    if node_type == "moa":
        return moa_view(answer)
    if node_type == "chunked":
        return chunked_view(answer)
    return None
