"""Compiled twin of ``OnlineSegmenter._learn_predict_python`` (``models/serving/segmenter.py``).

The Python code is the reference and defines the behaviour; this kernel runs the same river
StandardScaler + KMeans step on C arrays and must return the same segment and leave the same
state, bit for bit (``tests/unit/models/test_models_segmenter.py`` replays thousands of steps through both).

What must never change -- each line mirrors one Python float operation, in the same order:

- a NaN input is replaced by the running mean *before* that feature's update;
- ``mean = old + (x - old) / n`` and ``var = var + ((x - old) * (x - mean) - var) / n``, with
  ``n`` the new count converted to double (exact below 2**53, like Python's int / float);
- ``z = (x - mean) / var ** 0.5 if var else 0.0``;
- distance = ``sum(|c0 - z0| ** 2, |c1 - z1| ** 2, ...)`` and risk = ``sum(w0 * c0, ...)``,
  each exactly as the running interpreter's builtin ``sum`` adds floats (``_Sum`` below); the
  first strictly nearer centre wins;
- ``c += rate * (z - c)``;
- names: the ranking ``name_by_risk`` gets from ``sorted`` (timsort's run count + binary
  insertion for fewer than 64 clusters), so even NaN risks name the clusters the same way.
  ``Objects/listobject.c``'s ``count_run`` changed in CPython 3.13 (gh-116554: descending runs
  may contain equal elements); the kernel counts runs the way the running interpreter does.

``x ** y`` is CPython's ``float_pow`` (``Objects/floatobject.c``, the same special cases and
errno handling in 3.11, 3.12 and 3.13): its special cases, then libm ``pow`` with its errno
check (an overflowing square raises OverflowError, as in Python). The exponents are read from
the instance, never written as literals, so the C compiler cannot turn ``pow(x, 2.0)`` into
``x * x``: about one square in a thousand differs in the last bit, and as many ``pow(v, 0.5)``
differ from ``sqrt(v)``. Contraction into FMAs is off (setup.py).

Known, deliberate differences: a negative variance (only from a corrupt state, or a first step
from count 0 far from the mean) raises ValueError here where Python would go complex and fail
later; a buffer row must be float64.

Builtin ``sum`` is not the same function on every interpreter, so neither is this kernel's
(``SUMMATION``, chosen once at import from the running interpreter's version):

- CPython 3.11 (``Python/bltinmodule.c``, ``builtin_sum_impl``): the start value is the int 0,
  so the first float goes through ``0 + x`` -- int + float, i.e. ``0.0 + x`` (a -0.0 term
  becomes 0.0) -- and every further float is added plainly, ``f += x``;
- CPython 3.12 and 3.13 (same function; gh-100425, "sum() now uses Neumaier summation" in
  What's New in 3.12): the same ``0.0 + x`` for the first term, then for each further float
  ``t = f + x; c += (f - t) + x if fabs(f) >= fabs(x) else (x - t) + f; f = t``, and at the end
  ``f + c`` only ``if (c && Py_IS_FINITE(c))`` (so an overflowed or infinite sum stays inf
  instead of becoming NaN, and a sum with nothing to compensate is ``f`` itself).

The paths of ``builtin_sum_impl`` for non-float terms (the int loop beyond the start value, an
int term inside the float loop, the generic ``PyNumber_Add`` fallback) are never taken here:
every term the kernel sums is a float (a product or a power of floats). ``tests/unit/models/
test_models_segmenter.py`` holds ``float_sum`` to ``sum`` and the risks and distances to the
reference on inputs where the two summations differ.
"""

from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc cimport errno as c_errno
from libc.errno cimport ERANGE
from libc.math cimport INFINITY, fabs, isfinite, pow
from libc.string cimport strcmp

import sys

# Which builtin ``sum`` the reference runs on this interpreter (see the module docstring).
cdef bint COMPENSATED = sys.version_info >= (3, 12)
SUMMATION = "compensated" if COMPENSATED else "plain"
# Which listsort run count ``sorted`` uses on this interpreter (see ``_rank``).
cdef bint RUNS_313 = sys.version_info >= (3, 13)
SORT_RUNS = "3.13" if RUNS_313 else "3.11"

# Same strings, same order as models.serving.segmenter.SEGMENT_NAMES (interned literals).
cdef tuple NAMES = ("HIGH_RISK", "OTHERS", "LOW_RISK")
cdef enum:
    HIGH = 0
    OTHERS = 1
    LOW = 2
    MAX_CLUSTERS = 63  # list.sort is a plain binary insertion sort below 64 items


cdef int _raise_errno(int code) except -1:
    """CPython's ``PyErr_SetFromErrno`` for ``float_pow``: ERANGE is OverflowError."""
    import os
    raise (OverflowError if code == ERANGE else ValueError)(code, os.strerror(code))


cdef inline double _py_pow(double base, double exponent) except? -1.0:
    """``base ** exponent`` as CPython's ``float_pow`` computes it, for ``base`` >= 0 or
    NaN and ``exponent`` positive, finite and not an odd integer (0.5 and 2.0 here)."""
    cdef double result
    cdef int code
    if base != base or base == INFINITY:  # nan ** w is nan, inf ** w is inf: no libm
        return base
    if base == 0.0:
        return 0.0
    if base == 1.0:
        return 1.0
    c_errno.errno = 0
    result = pow(base, exponent)
    code = c_errno.errno
    if code == 0:
        if result == INFINITY or result == -INFINITY:
            code = ERANGE
    elif code == ERANGE and result == 0.0:
        code = 0  # underflow to zero is not an error
    if code != 0:
        _raise_errno(code)
    return result


cdef struct _Sum:
    double f  # builtin_sum_impl's f_result
    double c  # its compensation (stays 0.0 with plain summation)


cdef inline void _sum_first(_Sum *s, double x) noexcept:
    """The first term: ``sum`` starts from the int 0, and int + float is ``0.0 + x``."""
    s.f = 0.0 + x
    s.c = 0.0


cdef inline void _sum_add(_Sum *s, double x) noexcept:
    """A further float term, as the float loop of ``builtin_sum_impl`` adds it."""
    cdef double t
    if COMPENSATED:
        t = s.f + x
        if fabs(s.f) >= fabs(x):
            s.c = s.c + ((s.f - t) + x)
        else:
            s.c = s.c + ((x - t) + s.f)
        s.f = t
    else:
        s.f = s.f + x


cdef inline double _sum_result(const _Sum *s) noexcept:
    """The float ``sum`` returns: ``f + c`` only for a nonzero, finite compensation."""
    if s.c != 0.0 and isfinite(s.c):
        return s.f + s.c
    return s.f


def float_sum(values):
    """``sum(values)`` of a non-empty sequence of floats, computed the kernel's way (for tests
    against the builtin on this interpreter)."""
    cdef _Sum s
    cdef Py_ssize_t i, n = len(values)
    if n < 1:
        raise ValueError("float_sum needs at least one value (sum([]) is the int 0)")
    _sum_first(&s, values[0])
    for i in range(1, n):
        _sum_add(&s, values[i])
    return _sum_result(&s)


cdef inline bint _ranks_before(const double *risks, int a, int b) noexcept:
    """``(-risks[a], a) < (-risks[b], b)`` as tuple comparison decides it (NaN included)."""
    if risks[a] == risks[b]:
        return a < b
    return risks[a] > risks[b]  # -ra < -rb


cdef inline void _reverse(int *order, int lo, int hi) noexcept:
    """``order[lo:hi]`` reversed in place (listsort's ``reverse_slice``)."""
    cdef int tmp
    hi -= 1
    while lo < hi:
        tmp = order[lo]
        order[lo] = order[hi]
        order[hi] = tmp
        lo += 1
        hi -= 1


cdef int _count_run_311(const double *risks, int k, int *order) noexcept:
    """listsort's ``count_run`` up to CPython 3.12: a non-descending run, or a *strictly*
    descending one, reversed. k >= 2."""
    cdef int n = 2
    if _ranks_before(risks, order[1], order[0]):
        while n < k and _ranks_before(risks, order[n], order[n - 1]):
            n += 1
        _reverse(order, 0, n)
    else:
        while n < k and not _ranks_before(risks, order[n], order[n - 1]):
            n += 1
    return n


cdef int _count_run_313(const double *risks, int k, int *order) noexcept:
    """listsort's ``count_run`` from CPython 3.13 (gh-116554): a descending run may hold runs
    of equal elements (neither before the other, as NaN risks are), each reversed on the fly
    so the final reversal keeps them stable; the reversed run may then extend with an
    ascending suffix. k >= 2."""
    cdef int n = 1, neq = 0
    while n < k and not _ranks_before(risks, order[n], order[n - 1]):
        n += 1
    if n == k:
        return n
    if n > 1:
        if _ranks_before(risks, order[0], order[n - 1]):
            return n
        _reverse(order, 0, n)  # the ascending run was all equal: part of a descending one
    n += 1
    while n < k:
        if _ranks_before(risks, order[n], order[n - 1]):
            if neq:
                neq += 1
                _reverse(order, n - neq, n)
                neq = 0
        elif _ranks_before(risks, order[n - 1], order[n]):
            break
        else:
            neq += 1
        n += 1
    if neq:
        neq += 1
        _reverse(order, n - neq, n)
    _reverse(order, 0, n)
    while n < k and not _ranks_before(risks, order[n], order[n - 1]):
        n += 1
    return n


cdef void _rank(const double *risks, int k, int *order) noexcept:
    """``sorted(range(k), key=lambda i: (-risks[i], i))`` step for step as CPython's listsort
    does it for k < 64 (one run, no merge): count the leading run the way this interpreter
    does (``RUNS_313``), then binary insertion of the rest. With NaN risks the comparisons
    are not a total order, so the two ways of counting a run can rank differently."""
    cdef int i, n, l, r, p, pivot
    for i in range(k):
        order[i] = i
    if k < 2:
        return
    n = _count_run_313(risks, k, order) if RUNS_313 else _count_run_311(risks, k, order)
    for i in range(n, k):
        pivot = order[i]
        l, r = 0, i
        while l < r:
            p = l + ((r - l) >> 1)
            if _ranks_before(risks, pivot, order[p]):
                r = p
            else:
                l = p + 1
        p = i
        while p > l:
            order[p] = order[p - 1]
            p -= 1
        order[l] = pivot


cdef void _name(const double *risks, int k, int *names) noexcept:
    """``name_by_risk``: highest risk HIGH_RISK, lowest LOW_RISK, the rest OTHERS."""
    cdef int order[MAX_CLUSTERS]
    cdef int i
    order[0] = 0  # _rank fills order[:k], k >= 1; this only tells the C compiler
    _rank(risks, k, order)
    for i in range(k):
        names[i] = OTHERS
    names[order[0]] = HIGH
    if k > 1:
        names[order[k - 1]] = LOW


def name_by_risk(risks):
    """The kernel's naming on a list of risks (for tests against the Python rule)."""
    cdef int k = len(risks)
    cdef double values[MAX_CLUSTERS]
    cdef int names[MAX_CLUSTERS]
    if not 1 <= k <= MAX_CLUSTERS:
        raise ValueError(f"between 1 and {MAX_CLUSTERS} risks")
    for i in range(k):
        values[i] = risks[i]
    _name(values, k, names)
    return [NAMES[names[i]] for i in range(k)]


cdef class SegmenterKernel:
    """The online segmenter's state in C arrays and its per-event step."""

    cdef Py_ssize_t d, k, width
    cdef long long _count
    cdef double rate, half, two  # exponents live in memory so pow() is never folded
    cdef Py_ssize_t *index
    cdef double *x
    cdef double *z
    cdef double *_means
    cdef double *_vars
    cdef double *_centres
    cdef double *weights
    cdef double *_risks
    cdef int *_names

    def __cinit__(self, index, long long count, means, vars, centres, risk_weights,
                  double halflife):
        cdef Py_ssize_t d = len(index), k = len(centres), j, c
        if d < 1 or k < 1 or k > MAX_CLUSTERS:
            raise ValueError(f"need >= 1 feature and 1..{MAX_CLUSTERS} centres")
        if (len(means) != d or len(vars) != d or len(risk_weights) != d
                or any(len(centre) != d for centre in centres)):
            raise ValueError(f"segmenter state does not have {d} features per entry")
        self.d, self.k, self._count = d, k, count
        self.rate, self.half, self.two = halflife, 0.5, 2.0
        self.index = <Py_ssize_t *> PyMem_Malloc(d * sizeof(Py_ssize_t))
        self._names = <int *> PyMem_Malloc(k * sizeof(int))
        self.x = self._doubles(d)
        self.z = self._doubles(d)
        self._means = self._doubles(d)
        self._vars = self._doubles(d)
        self.weights = self._doubles(d)
        self._centres = self._doubles(k * d)
        self._risks = self._doubles(k)
        if self.index is NULL or self._names is NULL:
            raise MemoryError()
        self.width = 0
        for j in range(d):
            if index[j] < 0:
                raise ValueError("feature indices must be >= 0")
            self.index[j] = index[j]
            self.width = max(self.width, self.index[j] + 1)
            self._means[j] = means[j]
            self._vars[j] = vars[j]
            self.weights[j] = risk_weights[j]
        for c in range(k):
            for j in range(d):
                self._centres[c * d + j] = centres[c][j]
            self._risks[c] = self._risk(c)
        _name(self._risks, k, self._names)

    cdef double *_doubles(self, Py_ssize_t n) except NULL:
        cdef double *p = <double *> PyMem_Malloc(n * sizeof(double))
        if p is NULL:
            raise MemoryError()
        return p

    def __dealloc__(self):
        PyMem_Free(self.index)
        PyMem_Free(self._names)
        PyMem_Free(self.x)
        PyMem_Free(self.z)
        PyMem_Free(self._means)
        PyMem_Free(self._vars)
        PyMem_Free(self.weights)
        PyMem_Free(self._centres)
        PyMem_Free(self._risks)

    # -- the step -----------------------------------------------------------------------------

    def learn_predict(self, row):
        """learn_one + the segment of the centre that moved, for a full ``features()`` row: a
        list of floats, or a 1-D C-contiguous float64 buffer (a numpy row: the fast path)."""
        if type(row) is list:
            self._gather_list(<list> row)
        else:
            self._gather_buffer(row)
        return NAMES[self._names[self._step()]]

    def learn_predict_values(self, values):
        """The same step for the segment features alone, in ``features`` order (a sequence of
        d numbers; NaN still means missing)."""
        cdef Py_ssize_t j
        if len(values) != self.d:
            raise ValueError(f"expected {self.d} values")
        for j in range(self.d):
            self.x[j] = values[j]
        return NAMES[self._names[self._step()]]

    cdef int _gather_list(self, list row) except -1:
        cdef Py_ssize_t j
        if len(row) < self.width:
            raise IndexError("list index out of range")
        for j in range(self.d):
            self.x[j] = <double> row[self.index[j]]
        return 0

    cdef int _gather_buffer(self, object row) except -1:
        cdef Py_buffer view
        cdef const double *data
        cdef Py_ssize_t j
        PyObject_GetBuffer(row, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        try:
            if view.ndim != 1 or view.itemsize != 8 or not (
                    strcmp(view.format, b"d") == 0 or strcmp(view.format, b"=d") == 0
                    or strcmp(view.format, b"@d") == 0 or strcmp(view.format, b"<d") == 0):
                raise TypeError("a segmenter row must be a 1-D float64 buffer")
            if view.shape[0] < self.width:
                raise IndexError("row has fewer values than the features index")
            data = <const double *> view.buf
            for j in range(self.d):
                self.x[j] = data[self.index[j]]
        finally:
            PyBuffer_Release(&view)
        return 0

    cdef Py_ssize_t _step(self) except -1:
        """The reference's ``learn_predict`` on ``self.x``; returns the moved centre."""
        cdef Py_ssize_t j, c, d = self.d
        cdef double xk, old, mean, var, dn
        cdef double *centre
        self._count += 1
        dn = <double> self._count
        for j in range(d):
            xk = self.x[j]
            old = self._means[j]
            if xk != xk:
                xk = old  # _fill: missing -> the running mean before the update
            mean = old + (xk - old) / dn
            self._means[j] = mean
            var = self._vars[j] + ((xk - old) * (xk - mean) - self._vars[j]) / dn
            self._vars[j] = var
            if var != 0.0:
                if var < 0.0:  # Python would go complex here (var ** 0.5): refuse instead
                    raise ValueError(f"negative variance {var!r} for feature {j}")
                self.z[j] = (xk - mean) / _py_pow(var, self.half)
            else:
                self.z[j] = 0.0
        c = self._nearest()
        centre = self._centres + c * d
        for j in range(d):
            centre[j] = centre[j] + self.rate * (self.z[j] - centre[j])
        self._risks[c] = self._risk(c)
        _name(self._risks, self.k, self._names)
        return c

    cdef Py_ssize_t _nearest(self) except -1:
        cdef Py_ssize_t c, j, best = 0, d = self.d
        cdef double distance, best_distance = INFINITY
        cdef const double *centre
        cdef _Sum total
        for c in range(self.k):
            centre = self._centres + c * d
            _sum_first(&total, _py_pow(fabs(centre[0] - self.z[0]), self.two))
            for j in range(1, d):
                _sum_add(&total, _py_pow(fabs(centre[j] - self.z[j]), self.two))
            distance = _sum_result(&total)
            if distance < best_distance:
                best, best_distance = c, distance
        return best

    cdef double _risk(self, Py_ssize_t c) noexcept:
        cdef Py_ssize_t j, d = self.d
        cdef _Sum risk
        cdef const double *centre = self._centres + c * d
        _sum_first(&risk, self.weights[0] * centre[0])
        for j in range(1, d):
            _sum_add(&risk, self.weights[j] * centre[j])
        return _sum_result(&risk)

    # -- state, read back as Python objects -----------------------------------------------------

    @property
    def count(self):
        return self._count

    @property
    def means(self):
        return [self._means[j] for j in range(self.d)]

    @property
    def vars(self):
        return [self._vars[j] for j in range(self.d)]

    @property
    def centres(self):
        return [[self._centres[c * self.d + j] for j in range(self.d)] for c in range(self.k)]

    @property
    def risks(self):
        return [self._risks[c] for c in range(self.k)]

    @property
    def names(self):
        return [NAMES[self._names[c]] for c in range(self.k)]
