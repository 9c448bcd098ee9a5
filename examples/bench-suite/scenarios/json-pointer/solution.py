def _unescape(token):
    # ~1 first, so that "~01" becomes "~1" and not "/".
    return token.replace("~1", "/").replace("~0", "~")


def resolve(document, pointer):
    """The value `pointer` (RFC 6901) designates in `document`; KeyError if none."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise ValueError(f"not a JSON pointer: {pointer!r}")
    value = document
    for token in pointer[1:].split("/"):
        token = _unescape(token)
        if isinstance(value, list):
            if not token.isdigit() or (token != "0" and token.startswith("0")):
                raise KeyError(token)
            index = int(token)
            if index >= len(value):
                raise KeyError(token)
            value = value[index]
        elif isinstance(value, dict):
            if token not in value:
                raise KeyError(token)
            value = value[token]
        else:
            raise KeyError(token)
    return value
