import heapq


def order(graph):
    """Nodes of `graph` ({node: [dependencies]}) with dependencies first."""
    nodes = set(graph)
    for deps in graph.values():
        nodes.update(deps)
    waiting = {n: set(graph.get(n, ())) for n in nodes}
    dependents = {n: [] for n in nodes}
    for node, deps in waiting.items():
        for d in deps:
            dependents[d].append(node)
    ready = [n for n, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    out = []
    while ready:
        node = heapq.heappop(ready)
        out.append(node)
        for m in dependents[node]:
            waiting[m].discard(node)
            if not waiting[m]:
                heapq.heappush(ready, m)
    if len(out) != len(nodes):
        stuck = min(n for n in nodes if waiting[n])
        raise ValueError(f"cycle through {stuck!r}")
    return out
