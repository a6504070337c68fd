"""RFC 6962 (9162) Merkle trees: pure functions over leaf hashes, nothing of the log.

leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right); the tree of n leaves
splits at the largest power of two below n, so a tree whose size is not a power of two
has the RFC's shape (not a padded one). Tree hash, inclusion and consistency proofs
(RFC 9162 2.1.3, 2.1.4) and their verification.

A tree may have lost its oldest leaves (retention): what remains of them is the
*frontier* at the cut, the roots of the perfect subtrees that cover leaves [0, cut), at
most 64 hashes. Every subtree a proof of a later leaf, or of consistency between two
sizes past the cut, needs is either made of kept leaves or of frontier nodes and kept
leaves (a left sibling of a path to leaf i >= cut is a block of i's binary decomposition:
one of the cut's blocks, or one that starts at the cut's remaining low blocks), so proofs
about what is kept work after a cut exactly as before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


class Pruned(ValueError):
    """A proof or tree hash that needs leaves cut off by retention."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def blocks(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees covering leaves [0, size), largest (leftmost) first."""
    found, start = [], 0
    for bit in range(size.bit_length() - 1, -1, -1):
        if size >> bit & 1:
            found.append((start, start + (1 << bit)))
            start += 1 << bit
    return found


def fold(items: Iterable[tuple[int, bytes]]) -> bytes:
    """The tree hash of a sequence of perfect subtrees given as (leaves, hash), in order,
    each aligned (a run of single leaves, possibly after frontier blocks): equal
    neighbours merge as they come, the rest fold from the right."""
    stack: list[tuple[int, bytes]] = []
    for size, digest in items:
        while stack and stack[-1][0] == size:
            _, left = stack.pop()
            digest = node_hash(left, digest)
            size *= 2
        stack.append((size, digest))
    if not stack:
        return EMPTY_ROOT
    _, digest = stack.pop()
    while stack:
        digest = node_hash(stack.pop()[1], digest)
    return digest


class Frontier:
    """A tree grown one leaf at a time in O(log n) memory: its perfect subtrees."""

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        spans = blocks(size)
        if len(spans) != len(nodes):
            raise ValueError(f"a frontier of {size} leaves has {len(spans)} nodes: {len(nodes)}")
        self._stack = [
            (end - start, bytes(node)) for (start, end), node in zip(spans, nodes, strict=True)
        ]
        self.size = size

    def append(self, leaf: bytes) -> None:
        size, digest = 1, leaf
        while self._stack and self._stack[-1][0] == size:
            digest = node_hash(self._stack.pop()[1], digest)
            size *= 2
        self._stack.append((size, digest))
        self.size += 1

    def nodes(self) -> list[bytes]:
        return [digest for _, digest in self._stack]

    def root(self) -> bytes:
        return fold(self._stack)

    def copy(self) -> Frontier:
        return Frontier(self.size, self.nodes())


class Tree:
    """Leaves [cut, cut + len(leaves)) and the frontier of those before the cut."""

    def __init__(
        self, leaves: Sequence[bytes] = (), cut: int = 0, frontier: Sequence[bytes] = ()
    ) -> None:
        spans = blocks(cut)
        if len(spans) != len(frontier):
            raise ValueError(f"a cut at {cut} has {len(spans)} frontier nodes, not {len(frontier)}")
        self.leaves = leaves
        self.cut = cut
        self._frontier = dict(zip(spans, frontier, strict=True))

    @property
    def size(self) -> int:
        return self.cut + len(self.leaves)

    def hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]); Pruned when it needs a leaf before the cut."""
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"leaves [{start}, {end}) of a tree of {self.size}")
        items: list[tuple[int, bytes]] = []
        for (low, high), digest in self._frontier.items():
            if start <= low and high <= end:
                items.append((high - low, digest))
            elif low < end and start < high:
                raise Pruned(f"leaves [{start}, {end}) need leaves cut at {self.cut}")
        first = max(start, self.cut)
        if sum(size for size, _ in items) != min(end, self.cut) - min(start, self.cut):
            raise Pruned(f"leaves [{start}, {end}) need leaves cut at {self.cut}")
        if end > first:
            items.extend((1, leaf) for leaf in self.leaves[first - self.cut : end - self.cut])
        return fold(items)

    def root(self, size: int | None = None) -> bytes:
        return self.hash(0, self.size if size is None else size)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """The audit path of leaf `index` in the tree of the first `size` leaves."""
        if not 0 <= index < size <= self.size:
            raise ValueError(f"leaf {index} of a tree of {size} (of {self.size})")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = split(end - start)
            if index < start + k:
                path.append(self.hash(start + k, end))
                end = start + k
            else:
                path.append(self.hash(start, start + k))
                start += k
        return path[::-1]

    def consistency(self, old: int, size: int) -> list[bytes]:
        """PROOF(old, D[size]): the tree of `size` leaves extends the tree of `old`."""
        if not 0 <= old <= size <= self.size:
            raise ValueError(f"consistency of {old} and {size} (of {self.size})")
        if old in (0, size):
            return []
        path: list[bytes] = []
        start, end, whole = 0, size, True
        m = old
        while m != end - start:
            k = split(end - start)
            if m <= k:
                path.append(self.hash(start + k, end))
                end = start + k
            else:
                path.append(self.hash(start, start + k))
                start, m, whole = start + k, m - k, False
        if not whole:
            path.append(self.hash(start, end))
        return path[::-1]


def root_of(leaves: Sequence[bytes]) -> bytes:
    return fold((1, leaf) for leaf in leaves)


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, digest = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            digest = node_hash(sibling, digest)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            digest = node_hash(digest, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and digest == root


def verify_consistency(
    old: int, size: int, old_root: bytes, root: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2 (and the trivial cases: an empty old tree, equal sizes)."""
    if not 0 <= old <= size:
        return False
    if old == size:
        return not path and old_root == root
    if old == 0:
        return not path and old_root == EMPTY_ROOT
    if not path:
        return False
    nodes = list(path)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node
        nodes.insert(0, old_root)
    fn, sn = old - 1, size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = nodes[0]
    for node in nodes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(node, fr), node_hash(node, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, node)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == root
