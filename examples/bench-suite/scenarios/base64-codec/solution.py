_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}


def encode(data):
    out = []
    for i in range(0, len(data), 3):
        chunk = data[i : i + 3]
        n = int.from_bytes(chunk.ljust(3, b"\0"), "big")
        chars = [_ALPHABET[(n >> shift) & 63] for shift in (18, 12, 6, 0)]
        keep = len(chunk) + 1
        out.append("".join(chars[:keep]) + "=" * (4 - keep))
    return "".join(out)


def decode(text):
    if len(text) % 4:
        raise ValueError("length is not a multiple of 4")
    out = bytearray()
    for i in range(0, len(text), 4):
        quad = text[i : i + 4]
        pad = len(quad) - len(quad.rstrip("="))
        if pad > 2 or "=" in quad.rstrip("="):
            raise ValueError(f"bad padding in {quad!r}")
        n = 0
        for c in quad.rstrip("=").ljust(4, "A"):
            if c not in _INDEX:
                raise ValueError(f"not base64: {c!r}")
            n = n << 6 | _INDEX[c]
        out += n.to_bytes(3, "big")[: 3 - pad]
    return bytes(out)
