"""DDSketch bins, kept compact enough to give every retention bucket its own sketch.

The key/value mapping is the `ddsketch` package's own LogarithmicMapping at 1 % relative
accuracy, so our bins are exactly a `ddsketch.DDSketch`'s bins and merge the same way
(key-wise addition). What we do not use is the package's store objects: a live
`DDSketch` with 60 values measured about 3.1 KB here (tracemalloc), and 5 services x
2,100 buckets of those would be 33 MB. A closed bucket's bins are instead packed into one
`bytes` object (4 bytes header, then usually 1 byte per occupied bin), a few dozen bytes.

Quantiles use the nearest-rank rule (docs/metrics.md): the q-quantile of n values is the
value at 1-based rank ceil(q * n), at least 1, so the p99 of a few samples is the slowest
of them, as a person reading "p99" expects. The sketch answers with the representative
value of the bin that holds that sample, which is within 1 % of it. (DDSketch's own
`get_quantile_value` interpolates the rank as q * (n - 1), which puts the p99 of 4 samples
at the third; we share its bins and mapping, not that rule.) `to_ddsketch()` rebuilds a
real package sketch with the same bins.
"""
from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate
from typing import Iterable

from ddsketch.mapping import LogarithmicMapping

RELATIVE_ACCURACY = 0.01
MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_MULT = MAPPING._multiplier  # 1 / log2(gamma) * ... exactly what MAPPING.key() uses
_OFFSET = MAPPING._offset
ZERO_KEY = -32768  # values too small to map (0 ms) share one bin that reads back as 0.0
_MIN = MAPPING.min_possible
_log2 = math.log2
_ceil = math.ceil


def key(value: float) -> int:
    """The DDSketch key of a non-negative value (inlined MAPPING.key, it is on the hot path)."""
    if value <= 1e-9:
        return ZERO_KEY
    k = int(_ceil(_log2(value) * _MULT) + _OFFSET)
    # Keys are packed as int16: clamp absurd values (> ~1e284 ms, seen from a fuzzed probe
    # frame) into the top bin instead of crashing the store's flush with OverflowError.
    return k if ZERO_KEY < k <= 32767 else ZERO_KEY if k <= ZERO_KEY else 32767


_VALUES: dict[int, float] = {}


def value(k: int) -> float:
    """The representative value of bin k (memoised: keys are a few hundred small ints)."""
    v = _VALUES.get(k)
    if v is None:
        v = 0.0 if k == ZERO_KEY else MAPPING.value(k)
        if len(_VALUES) < 100_000:
            _VALUES[k] = v
    return v


def pack(bins: dict[int, int]) -> bytes | None:
    """Bins -> bytes, None when empty. Layout: 2 format bytes, the first key (int16), then
    either one byte per bin (key delta << 4 | count, when both fit in 4 bits, which is the
    common case for a probe's latencies) or the key deltas followed by the counts."""
    if not bins:
        return None
    keys = sorted(bins)
    counts = [bins[k] for k in keys]
    deltas = [0] + [b - a for a, b in zip(keys, keys[1:])]
    first = array("h", keys[:1]).tobytes()
    top, widest = max(counts), max(deltas)
    if top < 16 and widest < 16:
        return b"NN" + first + bytes(d << 4 | c for d, c in zip(deltas, counts))
    cw = "B" if top < 256 else "H" if top < 65536 else "I"
    dw = "B" if widest < 256 else "H"
    return (cw + dw).encode() + first + array(dw, deltas[1:]).tobytes() + array(cw, counts).tobytes()


def unpack(blob: bytes | None) -> Iterable[tuple[int, int]]:
    """bytes from pack() -> (key, count) pairs in key order."""
    if not blob:
        return ()
    k = array("h", blob[2:4])[0]
    if blob[0] == 78:  # "N": one byte per bin
        out = []
        for b in blob[4:]:
            k += b >> 4
            out.append((k, b & 15))
        return out
    cw, dw = chr(blob[0]), chr(blob[1])
    csize, dsize = array(cw).itemsize, array(dw).itemsize
    n = (len(blob) - 4 + dsize) // (csize + dsize)
    deltas = array(dw, blob[4:4 + dsize * (n - 1)])
    counts = array(cw, blob[4 + dsize * (n - 1):])
    keys = [k]
    for d in deltas:
        keys.append(keys[-1] + d)
    return zip(keys, counts)


def add_packed(bins: dict[int, int], blob: bytes | None, sign: int = 1) -> None:
    """Merge (sign=1) or un-merge (sign=-1) packed bins into a bins dict."""
    for k, c in unpack(blob):
        n = bins.get(k, 0) + sign * c
        if n > 0:
            bins[k] = n
        else:
            bins.pop(k, None)


def nearest_rank(q: float, n: int) -> int:
    """The 1-based rank of the q-quantile of n values: ceil(q * n), between 1 and n. The
    product is rounded to 9 places first, so float noise (0.07 * 100 = 7.000000000000001)
    does not push the rank up by one."""
    return min(n, max(1, _ceil(round(q * n, 9))))


def quantiles(bins: dict[int, int], qs: tuple[float, ...]) -> list[float | None]:
    """Quantile values (ascending qs) from bins, by nearest rank: the first key whose running
    count reaches the rank.

    The rank search is a bisect over running counts (accumulate/bisect run in C), which is
    what keeps a window's p50/p95/p99 at a few microseconds for a few hundred bins."""
    if not bins:
        return [None] * len(qs)
    keys = sorted(bins)
    cum = list(accumulate([bins[k] for k in keys]))
    total = cum[-1]
    return [value(keys[bisect_left(cum, nearest_rank(q, total))]) for q in qs]


class Counts:
    """A window's bins as counts per DDSketch key plus sums per block of keys (two levels):
    adding a bucket's bins is O(1) per bin, and finding the key at a rank is a running sum
    over the blocks and then within one block, each done by `accumulate` + `bisect` in C,
    so a window's p50/p95/p99 cost a few microseconds however many buckets it holds (a
    Fenwick tree's descent, a Python loop per level, cost several times more). The key range
    grows on demand; the zero bin is counted apart."""
    __slots__ = ("lo", "size", "shift", "cnt", "blk", "zeros", "total")

    def __init__(self) -> None:
        self.lo = 0
        self.size = 0
        self.shift = 0              # block width is 1 << shift keys
        self.cnt = array("q")       # count per key lo .. lo + size - 1
        self.blk = array("q")       # count per block of keys
        self.zeros = 0
        self.total = 0

    def add(self, k: int, c: int) -> None:
        self.total += c
        if k == ZERO_KEY:
            self.zeros += c
            return
        i = k - self.lo
        if not 0 <= i < self.size:
            self._grow(k)
            i = k - self.lo
        self.cnt[i] += c
        self.blk[i >> self.shift] += c

    def _grow(self, k: int) -> None:
        counts = self.points()
        lo = min([k] + [key for key, _ in counts])
        hi = max([k] + [key for key, _ in counts])
        size = 64
        while size < hi - lo + 1:
            size *= 2
        self.lo = lo - (size - (hi - lo + 1)) // 2  # room on both sides
        self.size = size
        # Blocks about as many as keys per block: both running sums stay short.
        self.shift = (size.bit_length()) // 2
        self.cnt = array("q", bytes(8 * size))
        self.blk = array("q", bytes(8 * (size >> self.shift)))
        total, zeros = self.total, self.zeros
        for key, c in counts:
            self.add(key, c)
        self.total, self.zeros = total, zeros

    def points(self) -> list[tuple[int, int]]:
        """(key, count) for every non-empty bin but the zero bin."""
        lo = self.lo
        return [(lo + i, c) for i, c in enumerate(self.cnt) if c]

    def key_at(self, rank: int) -> int:
        """Smallest key whose running count exceeds rank (a 0-based rank)."""
        return self._keys_at([rank])[0]

    def _keys_at(self, ranks: list[int]) -> list[int]:
        """key_at() for ascending ranks, sharing the running sums (ranks often share a block)."""
        zeros, lo, shift, cnt = self.zeros, self.lo, self.shift, self.cnt
        cum = list(accumulate(self.blk))
        blocks = len(cum)
        out = []
        inner_b, start, inner = -1, 0, []
        for rank in ranks:
            if rank < zeros:
                out.append(ZERO_KEY)
                continue
            rank -= zeros
            b = bisect_right(cum, rank)
            if b >= blocks:  # past the total: the last key (callers ask for ranks below it)
                out.append(lo + self.size - 1)
                continue
            if b:
                rank -= cum[b - 1]
            if b != inner_b:
                inner_b, start = b, b << shift
                inner = list(accumulate(cnt[start:start + (1 << shift)]))
            out.append(lo + start + bisect_right(inner, rank))
        return out

    def quantiles(self, qs: tuple[float, ...], extra: dict[int, int] | None = None) -> list[float | None]:
        """Quantiles of these counts, plus `extra` bins (a live bucket's) counted in only for
        this answer."""
        total = self.total
        if extra:
            total += sum(extra.values())
        if total <= 0:
            return [None] * len(qs)
        ranks = _RANKS.get((qs, total))
        if ranks is None:
            if len(_RANKS) >= 10_000:
                _RANKS.clear()
            ranks = _RANKS[(qs, total)] = [nearest_rank(q, total) - 1 for q in qs]
        if not extra:
            return [value(k) for k in self._keys_at(ranks)]
        add = self.add
        for k, c in extra.items():
            add(k, c)
        try:
            return [value(k) for k in self._keys_at(ranks)]
        finally:
            for k, c in extra.items():
                add(k, -c)


_RANKS: dict[tuple, list[int]] = {}  # (qs, total) -> the 0-based ranks: a window's total recurs a lot


def to_ddsketch(bins: dict[int, int]):
    """A real `ddsketch.DDSketch` with the same bins (for interop and for checking us)."""
    from ddsketch import DDSketch

    sketch = DDSketch(RELATIVE_ACCURACY)
    for k, c in bins.items():
        if k == ZERO_KEY:
            sketch.add(0.0, c)
        else:
            sketch.add(value(k), c)  # value(k) maps back to k, so the bin is identical
    return sketch
