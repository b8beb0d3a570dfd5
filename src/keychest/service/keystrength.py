"""How much guessing a client-chosen API key would take, and the bar it must clear.

A key is a bearer credential, stored as a plain SHA-256 (``keys.hash_key``) on the premise
that it carries at least 128 random bits; generated keys carry 160. A chosen key cannot show
its randomness, so its text is judged conservatively: characters times the bits of the
smallest usual alphabet they come from (hex 4, one-case letters and digits 5.17, mixed case
5.95), and nothing for a key that is mostly one character, a short block repeated, or a
run like ``abcdef``/``123456``. A random hex key of 32 digits (a UUID without its dashes)
reaches 128; ``aaaaaaaaaaaaaaaa`` reaches nothing.
"""

from __future__ import annotations

import math
import string

from keychest.service import errors

MIN_BITS = 128
_HEX_LOWER = set(string.digits + "abcdef")
_HEX_UPPER = set(string.digits + "ABCDEF")
_ONE_CASE = (set(string.digits + string.ascii_lowercase), set(string.digits + string.ascii_uppercase))
# A random 40-digit hex key shows 8 or fewer distinct digits about once in 10^10.
_MIN_DISTINCT = 8
# Steps repeated this often in a row (aaaa: step 0, abcd: step 1) are a pattern, not chance
# (about once in 10^9 for random hex).
_MAX_SAME_STEPS = 7


def _alphabet_bits(chars: str) -> float:
    used = set(chars)
    if used <= _HEX_LOWER or used <= _HEX_UPPER:
        return 4.0
    if any(used <= alphabet for alphabet in _ONE_CASE):
        return math.log2(36)
    return math.log2(62)


def _period(chars: str) -> int:
    """The length of the shortest block the text repeats (its own length if none)."""
    for size in range(1, len(chars) // 2 + 1):
        if all(chars[i] == chars[i % size] for i in range(len(chars))):
            return size
    return len(chars)


def _longest_same_step(chars: str) -> int:
    longest = run = 0
    for i in range(2, len(chars)):
        same = ord(chars[i]) - ord(chars[i - 1]) == ord(chars[i - 1]) - ord(chars[i - 2])
        run = run + 1 if same else 0
        longest = max(longest, run)
    return longest


def estimated_bits(key: str) -> float:
    chars = key.replace("-", "")
    if not chars:
        return 0.0
    patterned = (
        len(set(chars)) < _MIN_DISTINCT
        or _period(chars) < len(chars)
        or _longest_same_step(chars) >= _MAX_SAME_STEPS
    )
    return 0.0 if patterned else len(chars) * _alphabet_bits(chars)


def require_strong(key: str) -> None:
    """Refuse (422) a chosen key weaker than the bar generated keys clear."""
    bits = estimated_bits(key)
    if bits < MIN_BITS:
        raise errors.invalid(
            f"this API key is too easy to guess ({bits:.0f} of {MIN_BITS} bits): use a random one, "
            "e.g. `openssl rand -hex 20`, `uuidgen`, or let the server make one (GET access/claim/EMAIL)"
        )
