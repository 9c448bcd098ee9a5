def merge(intervals):
    """Sorted, non-overlapping intervals covering the same points as `intervals`."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start < merged[-1][1]:  # bug: touching intervals stay apart
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [tuple(i) for i in merged]
