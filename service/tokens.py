"""The production token policy: what makes a bearer token acceptable outside development.

A token must be long, varied (its characters' Shannon entropy over the whole token) and free of
the obvious: the placeholders this repository ships (``deploy/``, ``docker/``), words that mark a
placeholder, a repeated unit, or a run of equal or consecutive characters. ``python -c "import
secrets; print(secrets.token_urlsafe(32))"`` makes a token that passes.
"""

from __future__ import annotations

import math
from collections import Counter

MIN_LENGTH = 32
MIN_ENTROPY_BITS = 88.0
LONGEST_RUN = 6
PLACEHOLDER_WORDS = ("change", "replace", "example", "placeholder", "secret", "password", "token", "default")


def entropy_bits(token: str) -> float:
    """Shannon entropy of the token's character frequencies times its length (an upper bound on its strength)."""
    counts = Counter(token)
    n = len(token)
    return -n * sum(c / n * math.log2(c / n) for c in counts.values())


def longest_run(token: str) -> int:
    """The longest stretch of characters in steps of -1, 0 or +1 (``aaaa``, ``1234``, ``fedc``)."""
    best = run = 1
    step = None
    for a, b in zip(token, token[1:], strict=False):
        d = ord(b) - ord(a)
        if d in (-1, 0, 1) and (run == 1 or d == step):
            run, step = run + 1, d
        elif d in (-1, 0, 1):
            run, step = 2, d
        else:
            run, step = 1, None
        best = max(best, run)
    return best if token else 0


def token_problem(token: str) -> str | None:
    """Why ``token`` is not acceptable in production, or None if it is."""
    lowered = token.lower()
    if len(token) < MIN_LENGTH:
        return f"shorter than {MIN_LENGTH} characters"
    if word := next((w for w in PLACEHOLDER_WORDS if w in lowered), None):
        return f"looks like a placeholder (contains {word!r}): replace it"
    if token in (token + token)[1:-1]:
        return "a repeated pattern"
    if longest_run(token) > LONGEST_RUN:
        return f"has a run of more than {LONGEST_RUN} equal or consecutive characters"
    if (bits := entropy_bits(token)) < MIN_ENTROPY_BITS:
        return f"too predictable ({bits:.0f} bits of character entropy, needs {MIN_ENTROPY_BITS:.0f})"
    return None
