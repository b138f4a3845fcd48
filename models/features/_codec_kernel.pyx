# cython: language_level=3
"""Compiled twin of ``LoanStateCodec.encode``'s fast path (``models/features/state_codec.py``).

The scorer writes one changelog record per loan touched in every transaction -- nearly one
per input event at full speed -- so this encoder is on the hot path. It writes exactly the
bytes the Python fast path writes (and fastavro writes: ``tests/unit/models/test_models_state_codec.py``
compares all three): the header, ``loan_id`` and ``borrower_id`` as Avro strings, the state's
``SLOTS`` doubles as they lie in memory (little-endian IEEE, as Avro encodes a double), then
the nullable ``strategy``, ``risk_tier``, ``risk_score`` and ``segment``, then (v3) the
nullable ``guard`` (its doubles as one Avro array block, then its nullable time zone).
"""

from cpython.array cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcpy


cdef inline Py_ssize_t long_size(Py_ssize_t n) noexcept:
    """Bytes of the Avro zig-zag varint of a non-negative ``n``."""
    cdef unsigned long long z = (<unsigned long long>n) << 1
    cdef Py_ssize_t size = 1
    while z > 0x7F:
        z >>= 7
        size += 1
    return size


cdef inline char* write_long(char* out, Py_ssize_t n) noexcept:
    cdef unsigned long long z = (<unsigned long long>n) << 1
    while z > 0x7F:
        out[0] = <char>((z & 0x7F) | 0x80)
        out += 1
        z >>= 7
    out[0] = <char>z
    return out + 1


cdef inline char* write_bytes(char* out, const char* data, Py_ssize_t n) noexcept:
    out = write_long(out, n)
    memcpy(out, data, n)
    return out + n


cdef inline const char* utf8(object text, Py_ssize_t* n) except NULL:
    return PyUnicode_AsUTF8AndSize(text, n)


def encode_state(bytes header, object state, Py_ssize_t slots) -> bytes:
    """``header`` + the Avro body of ``state`` (a ``LoanState``: ``slots`` values, then the
    risk score; ids and labels in its attributes)."""
    cdef array values = <array>state
    cdef double* v = values.data.as_doubles
    cdef Py_ssize_t loan_n, borrower_n, strategy_n = 0, tier_n = 0, segment_n = 0
    cdef const char* loan = utf8(state.loan_id, &loan_n)
    cdef bytes borrower = state._borrower
    borrower_n = PyBytes_GET_SIZE(borrower)
    # LoanState's shared (strategy, tier, segment) triple: one slot read, not three properties
    strategy_obj, tier_obj, segment_obj = state._labels
    cdef const char* strategy = NULL
    cdef const char* tier = NULL
    cdef const char* segment = NULL
    if strategy_obj is not None:
        strategy = utf8(strategy_obj, &strategy_n)
    if tier_obj is not None:
        tier = utf8(tier_obj, &tier_n)
    if segment_obj is not None:
        segment = utf8(segment_obj, &segment_n)
    cdef object guard_obj = state.guard
    cdef Py_ssize_t guard_n = 0, zone_n = 0
    cdef const char* zone = NULL
    cdef double* g = NULL
    cdef Py_ssize_t guard_size = 1
    if guard_obj is not None:
        guard_n = len(guard_obj)
        g = (<array>guard_obj).data.as_doubles
        if guard_obj.time_zone is not None:
            zone = utf8(guard_obj.time_zone, &zone_n)
        guard_size = (1 + long_size(guard_n) + 8 * guard_n + (1 if guard_n else 0)
                      + (1 + long_size(zone_n) + zone_n if zone else 1))
    cdef double score = v[slots]
    cdef bint has_score = score == score
    cdef Py_ssize_t size = (PyBytes_GET_SIZE(header) + long_size(loan_n) + loan_n
                            + long_size(borrower_n) + borrower_n + 8 * slots + 4
                            + (long_size(strategy_n) + strategy_n if strategy else 0)
                            + (long_size(tier_n) + tier_n if tier else 0)
                            + (8 if has_score else 0)
                            + (long_size(segment_n) + segment_n if segment else 0)
                            + guard_size)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(header), PyBytes_GET_SIZE(header))
    p += PyBytes_GET_SIZE(header)
    p = write_bytes(p, loan, loan_n)
    p = write_bytes(p, PyBytes_AS_STRING(borrower), borrower_n)
    memcpy(p, v, 8 * slots)
    p += 8 * slots
    p = write_optional_string(p, strategy, strategy_n)
    p = write_optional_string(p, tier, tier_n)
    if has_score:
        p[0] = 2
        memcpy(p + 1, &v[slots], 8)
        p += 9
    else:
        p[0] = 0
        p += 1
    p = write_optional_string(p, segment, segment_n)
    if guard_obj is None:
        p[0] = 0
        p += 1
    else:
        p[0] = 2
        p = write_long(p + 1, guard_n)
        if guard_n:
            memcpy(p, g, 8 * guard_n)
            p += 8 * guard_n
            p[0] = 0  # end of the array's blocks
            p += 1
        p = write_optional_string(p, zone, zone_n)
    assert p == PyBytes_AS_STRING(out) + size
    return out


cdef inline char* write_optional_string(char* out, const char* text, Py_ssize_t n) noexcept:
    if text == NULL:
        out[0] = 0  # union branch 0: null
        return out + 1
    out[0] = 2  # union branch 1 (zig-zag): the value
    return write_bytes(out + 1, text, n)
