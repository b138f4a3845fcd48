"""Compiled twin of ``FastCalibratedForest``'s numpy forest stage (``models/serving/forest.py``).

The numpy reference computes, per row, ``total = 0.0; total += value_t[leaf_t(x)]`` for every
tree ``t`` *in estimator order*, then ``total /= n_trees``. :class:`ForestKernel` performs
exactly those float64 operations in exactly that order, so its result is bit for bit the
reference's (and scikit-learn's). What must never change here:

* the summation order: tree 0, tree 1, ... added one at a time into a float64 that starts at
  0.0, then one division by the number of trees (no pairwise/blocked sums, no multiplying by a
  reciprocal, no reassociation -- setup.py also compiles without fast-math or FMA contraction);
* the split test: scikit-learn's ``_apply_dense`` -- a NaN goes by ``missing_go_to_left``,
  otherwise left iff ``<double>x32 <= threshold`` with the float64 threshold (kept in float64
  here, so no rounding argument is needed).

Layout: all trees in one contiguous array of 16-byte nodes, renumbered depth first so that
the two children of a split sit next to each other (right = left + 1): a step is one node load,
one feature load and an add of the comparison result. A leaf loops onto itself (threshold +inf,
NaN goes "left" = itself), so a block of paths is walked in lockstep for the tree's depth with
no data-dependent branch; the class-1 fractions sit in a separate array indexed by node.

:meth:`ForestKernel.explain` is the compiled twin of
``models.serving.contributions.input_contributions_numpy`` (the Saabas path decomposition): per
row, tree by tree in estimator order and root to leaf (blocks of rows in lockstep),
``c[slot[feature]] += value[child] - value[node]`` for every split on the path (``slot``: the
model input a forest column belongs to, so one-hot columns fold into their input as they are
walked), then one division by the number of trees -- the reference's additions in the
reference's order, so the same bits. The same walk adds each tree's leaf value to the row's
vote, so the votes are :meth:`ForestKernel.sum_votes`'s bits without a second walk.
:func:`top_positions` is the twin of ``top_positions_numpy``: each row's 3 largest
contributions, ties by position.
"""

import numpy as np

cimport cython
from libc.stdint cimport int32_t
from libc.math cimport isnan


cdef packed struct Node:
    # 2 * feature + missing_go_to_left. A leaf: 1 (feature 0, NaN goes "left").
    int32_t code
    # Index of the left child in the node array (the right child is left + 1). A leaf: itself.
    int32_t left
    # The float64 split threshold. A leaf: +inf, so every value (and NaN) stays on it.
    double threshold


# Paths walked together: the block's feature rows (LANES x ~50 float32) and each tree's nodes
# (a few KB) stay in L1 while LANES independent paths overlap in the out-of-order core.
cdef enum:
    LANES = 64


cdef class ForestKernel:
    """The fitted trees of one forest, flattened for :meth:`sum_votes`."""

    cdef Node[::1] _nodes
    # The class-1 fraction of every node (leaves for the votes, all for the contributions).
    cdef double[::1] _leaf_values
    # value[node] - value[parent]: the difference the decomposition adds on entering a node
    # (the reference's subtraction, done once here: the same bits).
    cdef double[::1] _deltas
    cdef int32_t[::1] _roots
    cdef int32_t[::1] _depths
    cdef readonly int n_trees
    cdef readonly int n_features

    def __init__(self, trees: list, n_features: int) -> None:
        """``trees``: scikit-learn ``Tree`` objects in estimator order; ``n_features``: the
        width of the rows the forest was fitted on (checked on every call)."""
        if not trees:
            raise ValueError("a forest needs at least one tree")
        total = sum(int(tree.node_count) for tree in trees)
        if total >= 2 ** 31 - 2:
            raise ValueError("too many nodes for int32 indices")
        nodes = np.zeros(total, dtype=_node_dtype())
        leaf_values = np.zeros(total, dtype=np.float64)
        deltas = np.zeros(total, dtype=np.float64)
        roots = np.zeros(len(trees), dtype=np.int32)
        depths = np.zeros(len(trees), dtype=np.int32)
        cdef int next_free = 0
        for t, tree in enumerate(trees):
            roots[t] = next_free
            next_free, depths[t] = _flatten(
                tree, nodes, leaf_values, deltas, next_free, n_features
            )
        self._nodes = nodes
        self._leaf_values = leaf_values
        self._deltas = deltas
        self._roots = roots
        self._depths = depths
        self.n_trees = len(trees)
        self.n_features = n_features

    def sum_votes(self, const float[:, ::1] x32) -> np.ndarray:
        """Mean over trees of the class-1 fraction of each row's leaf (float64 per row)."""
        if x32.shape[1] != self.n_features:
            raise ValueError(f"rows have {x32.shape[1]} features, the forest {self.n_features}")
        cdef Py_ssize_t n_rows = x32.shape[0]
        out = np.zeros(n_rows, dtype=np.float64)
        if n_rows == 0:
            return out
        cdef double[::1] total = out
        with nogil:
            self._sum_votes(&x32[0, 0], n_rows, &total[0])
        return out

    @cython.cdivision(True)
    cdef void _sum_votes(self, const float* x, Py_ssize_t n_rows, double* total) noexcept nogil:
        """``total[i] = (((0.0 + v_0) + v_1) + ...) / n_trees`` -- tree by tree, in order.

        Lanes are (tree, row) pairs walked in lockstep: a block of up to LANES rows, and when
        the block is small (a batch of a few rows) several trees at once, so there are always
        enough independent paths in flight. The votes are added after the walk, tree by tree."""
        cdef const Node* nodes = &self._nodes[0]
        cdef const double* leaf_values = &self._leaf_values[0]
        cdef const int32_t* roots = &self._roots[0]
        cdef const int32_t* depths = &self._depths[0]
        cdef Py_ssize_t stride = self.n_features
        cdef int n_trees = self.n_trees
        cdef double divisor = <double>n_trees
        cdef int32_t at[LANES]
        cdef const float* row_of[LANES]
        cdef Py_ssize_t start, i, lane, rows, lanes
        cdef int first, trees, per_chunk, j, level, depth
        cdef const Node* node
        cdef float value
        cdef int go_right
        start = 0
        while start < n_rows:
            rows = min(<Py_ssize_t>LANES, n_rows - start)
            per_chunk = max(1, LANES // rows)
            first = 0
            while first < n_trees:
                trees = min(per_chunk, n_trees - first)
                lanes = trees * rows
                depth = 0
                for j in range(trees):
                    depth = max(depth, depths[first + j])
                    for i in range(rows):
                        at[j * rows + i] = roots[first + j]
                        row_of[j * rows + i] = x + (start + i) * stride
                # Every lane walks ``depth`` levels; a leaf loops onto itself (no branches).
                for level in range(depth):
                    for lane in range(lanes):
                        node = nodes + at[lane]
                        value = row_of[lane][node.code >> 1]
                        go_right = not (<double>value <= node.threshold)
                        if isnan(value):
                            go_right = (node.code & 1) ^ 1
                        at[lane] = node.left + go_right
                for j in range(trees):  # estimator order: the reference's sum
                    for i in range(rows):
                        total[start + i] += leaf_values[at[j * rows + i]]
                first += trees
            for i in range(rows):
                total[start + i] /= divisor
            start += rows

    def explain(self, const float[:, ::1] x32, const int32_t[::1] slots, int n_inputs) -> tuple:
        """``(votes, contributions)`` of every row from ONE walk of its paths: ``votes`` the
        bits of :meth:`sum_votes`, ``contributions`` (n x ``n_inputs``) per model input, the
        mean over trees of the value changes at the path's splits, a split on forest column
        ``c`` counted in column ``slots[c]`` (a one-hot category's in its categorical input).
        The twin of ``models.serving.contributions.input_contributions_numpy``."""
        if x32.shape[1] != self.n_features:
            raise ValueError(f"rows have {x32.shape[1]} features, the forest {self.n_features}")
        if slots.shape[0] != self.n_features:
            raise ValueError(f"{slots.shape[0]} slots for {self.n_features} forest columns")
        cdef Py_ssize_t f
        if n_inputs < 1:
            raise ValueError("at least one input")
        for f in range(slots.shape[0]):  # an out-of-range slot would write past the rows
            if not 0 <= slots[f] < n_inputs:
                raise ValueError(f"slot {slots[f]} of column {f} is not below {n_inputs}")
        cdef Py_ssize_t n_rows = x32.shape[0]
        votes = np.zeros(n_rows, dtype=np.float64)
        out = np.zeros((n_rows, n_inputs), dtype=np.float64)
        if n_rows == 0:
            return votes, out
        cdef double[::1] total = votes
        cdef double[:, ::1] cells = out
        with nogil:
            self._explain(&x32[0, 0], n_rows, &slots[0], n_inputs, &total[0], &cells[0, 0])
        return votes, out

    @cython.cdivision(True)
    cdef void _explain(self, const float* x, Py_ssize_t n_rows, const int32_t* slots,
                       int n_inputs, double* votes, double* out) noexcept nogil:
        """Blocks of up to LANES rows walk each tree in lockstep (independent paths overlap in
        the core, as in :meth:`_sum_votes`), one tree after the other: a row's cells get tree
        0's differences root to leaf, then tree 1's, ... -- the reference's order -- and at
        each tree's end its leaf's value is added to the row's vote (estimator order, as in
        :meth:`_sum_votes`: the same bits). Trees are not walked side by side here: their
        additions into one cell would interleave.

        A path that reached its leaf skips the rest of the tree's levels. A branch-free variant
        (a leaf keeps stepping on itself and adds into a spare column) measured 9.3 us per
        explained row against 6.5 us for this (CPU time, bench rows, 2 shared cores): it does
        the skipped steps and their stores."""
        cdef const Node* nodes = &self._nodes[0]
        cdef const double* deltas = &self._deltas[0]
        cdef const double* leaf_values = &self._leaf_values[0]
        cdef const int32_t* roots = &self._roots[0]
        cdef const int32_t* depths = &self._depths[0]
        cdef Py_ssize_t stride = self.n_features
        cdef double divisor = <double>self.n_trees
        cdef int32_t at[LANES]
        cdef Py_ssize_t start, rows, lane, f
        cdef int t, level, feature
        cdef int32_t child
        cdef const Node* node
        cdef float value
        cdef int go_right
        start = 0
        while start < n_rows:
            rows = min(<Py_ssize_t>LANES, n_rows - start)
            for t in range(self.n_trees):
                for lane in range(rows):
                    at[lane] = roots[t]
                for level in range(depths[t]):
                    for lane in range(rows):
                        node = nodes + at[lane]
                        if node.left == at[lane]:  # a leaf: this path is done
                            continue
                        feature = node.code >> 1
                        value = x[(start + lane) * stride + feature]
                        go_right = not (<double>value <= node.threshold)
                        if isnan(value):
                            go_right = (node.code & 1) ^ 1
                        child = node.left + go_right
                        out[(start + lane) * n_inputs + slots[feature]] += deltas[child]
                        at[lane] = child
                for lane in range(rows):  # estimator order: the votes' sum
                    votes[start + lane] += leaf_values[at[lane]]
            for lane in range(rows):
                votes[start + lane] /= divisor
                for f in range(n_inputs):
                    out[(start + lane) * n_inputs + f] /= divisor
            start += rows


cdef inline bint _before(double v, double w) noexcept nogil:
    """Does ``v`` rank before ``w``: larger, and every number before a NaN (numpy's order)."""
    return v > w or (w != w and v == v)


def top_positions(const double[:, ::1] values, int k) -> np.ndarray:
    """Per row, the positions of its ``k`` largest values, largest first; equal values by
    position (the first first), NaN after every number -- the choice of the reference
    ``models.serving.contributions.top_positions_numpy`` (a stable argsort of ``-values``).
    One pass of insertion into ``k`` slots per row (k is 3): no sort of the whole row."""
    if k < 0:
        raise ValueError("k must be >= 0")
    cdef Py_ssize_t n = values.shape[0], m = values.shape[1]
    cdef Py_ssize_t kk = min(<Py_ssize_t>k, m)
    out = np.zeros((n, kk), dtype=np.intp)
    if n == 0 or kk == 0:
        return out
    cdef Py_ssize_t[:, ::1] chosen = out
    cdef Py_ssize_t r, j, p, q, filled
    cdef double v
    with nogil:
        for r in range(n):
            filled = 0
            for j in range(m):
                v = values[r, j]
                p = filled
                # Strictly before: an equal value stays behind the earlier position.
                while p > 0 and _before(v, values[r, chosen[r, p - 1]]):
                    p -= 1
                if p >= kk:
                    continue
                q = filled if filled < kk else kk - 1
                while q > p:
                    chosen[r, q] = chosen[r, q - 1]
                    q -= 1
                chosen[r, p] = j
                if filled < kk:
                    filled += 1
    return out


def _node_dtype() -> np.dtype:
    """The numpy twin of ``Node`` (16 bytes, no padding)."""
    return np.dtype([("code", np.int32), ("left", np.int32), ("threshold", np.float64)])


def _flatten(tree, nodes: np.ndarray, leaf_values: np.ndarray, deltas: np.ndarray,
             int start, int n_features) -> tuple:
    """Copy ``tree`` into ``nodes[start:]`` with siblings adjacent; returns the next free slot
    and the tree's depth (edges on its longest path).

    Depth-first, left subtree first, so a path stays within a few cache lines near the root."""
    left = np.asarray(tree.children_left)
    right = np.asarray(tree.children_right)
    feature = np.asarray(tree.feature)
    threshold = np.asarray(tree.threshold, dtype=np.float64)
    fraction = np.asarray(tree.value[:, 0, 1], dtype=np.float64)
    missing_left = getattr(tree, "missing_go_to_left", None)
    if missing_left is None:  # scikit-learn < 1.3: no NaN support, the flag never matters
        missing_left = np.zeros(len(left), dtype=np.uint8)
    split_features = feature[left != -1]
    if split_features.size and not (0 <= split_features.min() <= split_features.max()
                                    < n_features):
        raise ValueError("a split reads a feature outside the rows")
    code, child, number = nodes["code"], nodes["left"], nodes["threshold"]
    cdef int free = start + 1
    cdef int depth = 0
    stack = [(0, start, 0, -1)]  # (scikit-learn node id, slot in ``nodes``, depth, parent id)
    while stack:
        node_id, at, level, parent = stack.pop()
        depth = max(depth, level)
        leaf_values[at] = fraction[node_id]
        if parent >= 0:
            deltas[at] = fraction[node_id] - fraction[parent]
        if left[node_id] == -1:
            code[at], child[at], number[at] = 1, at, np.inf
            continue
        code[at] = 2 * int(feature[node_id]) + (1 if missing_left[node_id] else 0)
        child[at], number[at] = free, threshold[node_id]
        stack.append((right[node_id], free + 1, level + 1, node_id))
        stack.append((left[node_id], free, level + 1, node_id))
        free += 2
    return free, depth
