"""Near misses: which known word a mistyped one most likely meant.

Used for config keys (cni/config.py) and CNI_COMMAND (cni/contract.py). Tight on
purpose: an unknown key that is no near miss is kept (runtimes and chained
plugins add their own), so a loose rule would refuse configs that work.
"""


def distance(a, b):
    """Edits (insert, delete, substitute, swap two neighbours) turning a into b."""
    previous, current = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        before, previous, current = previous, current, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
    return current[len(b)]


def folded(word):
    """`Range_Start`, `range-start` and `rangestart` all fold to `rangestart`."""
    return word.lower().replace("_", "").replace("-", "")


def near_miss(word, known):
    """The known word `word` most likely meant, or None.

    Same letters in another case or with '_'/'-' between words, or one edit away
    (two for words of 8 letters or more)."""
    if not isinstance(word, str) or word in known:
        return None
    key = folded(word)
    best = None
    for candidate in sorted(known):
        if folded(candidate) == key:
            return candidate
        limit = 1 if min(len(word), len(candidate)) < 8 else 2
        d = distance(key, folded(candidate))
        if d <= limit and (best is None or d < best[0]):
            best = (d, candidate)
    return best[1] if best else None
