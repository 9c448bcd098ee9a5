def _key(version):
    core, _, pre = version.partition("-")
    numbers = tuple(int(p) for p in core.split("."))
    if not pre:
        return numbers, (1,)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return numbers, (0, parts)


def compare(a, b):
    """-1, 0 or 1 as semantic version a is older than, equal to or newer than b."""
    ka, kb = _key(a), _key(b)
    return (ka > kb) - (ka < kb)
