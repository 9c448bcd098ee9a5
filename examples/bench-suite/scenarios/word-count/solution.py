import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def word_count(text):
    return Counter(_WORD.findall(text.lower()))
