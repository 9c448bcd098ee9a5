def fields(line):
    """The fields of one CSV record (RFC 4180, no embedded newlines)."""
    out, field, i, quoted = [], [], 0, False
    while i < len(line):
        c = line[i]
        if quoted:
            if c == '"':
                if i + 1 < len(line) and line[i + 1] == '"':
                    field.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                field.append(c)
        elif c == '"':
            quoted = True
        elif c == ",":
            out.append("".join(field))
            field = []
        else:
            field.append(c)
        i += 1
    if quoted:
        raise ValueError("unterminated quoted field")
    out.append("".join(field))
    return out
