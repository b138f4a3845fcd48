# cython: language_level=3
"""Compiled twins of ``LoanStateCodec``'s fast paths (``models/features/state_codec.py``):
``encode_state`` of ``_encode_python``, and ``StateDecoder`` (at the end of this file) of
``_decode_body``, which a restore runs once per changelog record.

The scorer writes one changelog record per loan touched in every transaction -- nearly one
per input event at full speed -- so this encoder is on the hot path. It writes exactly the
bytes the Python fast path writes (and fastavro writes: ``tests/unit/models/test_models_state_codec.py``
compares all three): the header, ``loan_id`` and ``borrower_id`` as Avro strings, the state's
``SLOTS`` doubles as they lie in memory (little-endian IEEE, as Avro encodes a double), then
the nullable ``strategy``, ``risk_tier``, ``risk_score`` and ``segment``, then (v3) the
nullable ``guard`` (its doubles as one Avro array block, then its nullable time zone).
"""

from cpython.array cimport array, clone
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


# -- decode: the compiled twin of ``LoanStateCodec._decode_body`` --------------------------------

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)


cdef array _DOUBLES_TEMPLATE = array("d")  # clone()'s model for a guard's values


cdef inline Py_ssize_t read_long(const unsigned char* data, Py_ssize_t n, Py_ssize_t* pos,
                                 long long* value) except -1:
    """The Avro ``long`` at ``pos[0]`` into ``value``; moves ``pos`` past it."""
    cdef unsigned long long z = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if pos[0] >= n:
            raise ValueError("a varint overruns the record")
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")
        byte = data[pos[0]]
        pos[0] += 1
        z |= (<unsigned long long>(byte & 0x7F)) << shift
        if byte < 0x80:
            value[0] = <long long>(z >> 1) ^ -(<long long>(z & 1))
            return 0
        shift += 7


cdef inline Py_ssize_t read_size(const unsigned char* data, Py_ssize_t n,
                                 Py_ssize_t* pos) except -1:
    """A string's length prefix, checked against the record's end."""
    cdef long long size
    read_long(data, n, pos, &size)
    if size < 0 or size > n - pos[0]:
        raise ValueError(f"string of {size} bytes overruns the record")
    return <Py_ssize_t>size


cdef inline unsigned char branch_at(const unsigned char* data, Py_ssize_t n,
                                    Py_ssize_t pos) except? 255:
    if pos >= n:
        raise ValueError("a union branch overruns the record")
    return data[pos]


cdef object read_label(bytes record, const unsigned char* data, Py_ssize_t n, Py_ssize_t* pos,
                       dict labels, Py_ssize_t max_labels):
    """A nullable decision label, shared through ``labels`` (raw bytes -> str) like the
    reference's ``_read_optional_string``."""
    cdef unsigned char branch = branch_at(data, n, pos[0])
    if branch == 0:
        pos[0] += 1
        return None
    if branch != 2:
        raise ValueError(f"bad union branch {branch}")
    pos[0] += 1
    cdef Py_ssize_t size = read_size(data, n, pos)
    cdef bytes raw = PyBytes_FromStringAndSize(<const char*>data + pos[0], size)
    pos[0] += size
    label = labels.get(raw)
    if label is None:
        label = raw.decode()
        if len(labels) < max_labels:
            labels[raw] = label
    return label


cdef class StateDecoder:
    """Decodes ``LoanState`` bodies like the reference's ``_decode_body``; configured once per
    codec (the per-record call passes only the record).

    ``template``: a blank ``LoanState`` (its type and its score's NaN are copied);
    ``labels``/``max_labels``: the codec's shared label strings (raw bytes -> str);
    ``pairs``/``max_pairs``: ``models.features.state``'s shared ``(strategy, tier, segment)`` triples
    (what its ``_labels`` reads and fills); ``restored_guard``: ``guard_state``'s."""

    cdef array template
    cdef dict labels, pairs
    cdef Py_ssize_t max_labels, max_pairs, slots
    cdef object restored_guard

    def __init__(self, array template, dict labels, Py_ssize_t max_labels, dict pairs,
                 Py_ssize_t max_pairs, object restored_guard, Py_ssize_t slots):
        self.template, self.labels, self.max_labels = template, labels, max_labels
        self.pairs, self.max_pairs = pairs, max_pairs
        self.restored_guard, self.slots = restored_guard, slots

    def decode(self, bytes record, Py_ssize_t pos):
        """(the state whose Avro body starts at ``pos`` of ``record``, the body's end). A
        corrupt body raises ``ValueError`` (``UnicodeDecodeError`` for a bad id)."""
        cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(record)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(record)
        cdef Py_ssize_t slots = self.slots
        cdef Py_ssize_t size = read_size(data, n, &pos)
        loan_id = (<bytes>PyBytes_FromStringAndSize(<const char*>data + pos, size)).decode()
        pos += size
        size = read_size(data, n, &pos)
        cdef bytes borrower = PyBytes_FromStringAndSize(<const char*>data + pos, size)
        cdef Py_ssize_t i
        for i in range(size):  # the reference decodes it: an invalid UTF-8 id is refused alike
            if data[pos + i] >= 0x80:
                borrower.decode()
                break
        pos += size
        if 8 * slots > n - pos:
            raise ValueError("the state's values overrun the record")
        # clone() makes an object of the template's own type (LoanState), sized exactly like
        # LoanState(...) is (no over-allocation), without running its __new__.
        cdef array state = clone(self.template, slots + 1, False)
        cdef double* v = state.data.as_doubles
        memcpy(v, data + pos, 8 * slots)
        memcpy(&v[slots], &self.template.data.as_doubles[slots], 8)  # no score: the NaN
        pos += 8 * slots
        strategy = read_label(record, data, n, &pos, self.labels, self.max_labels)
        tier = read_label(record, data, n, &pos, self.labels, self.max_labels)
        cdef unsigned char branch = branch_at(data, n, pos)
        if branch == 2:
            if 9 > n - pos:
                raise ValueError("risk_score overruns the record")
            memcpy(&v[slots], data + pos + 1, 8)
            pos += 9
        elif branch == 0:
            pos += 1
        else:
            raise ValueError(f"bad union branch {branch} of risk_score")
        segment = read_label(record, data, n, &pos, self.labels, self.max_labels)
        guard = None
        branch = branch_at(data, n, pos)
        if branch == 2:
            guard = read_guard(record, data, n, &pos, self.labels, self.max_labels,
                               self.restored_guard)
        elif branch == 0:
            pos += 1
        else:
            raise ValueError(f"bad union branch {branch} of guard")
        key = (strategy, tier, segment)  # models.features.state._labels, inlined
        triple = self.pairs.get(key)
        if triple is None:
            triple = key
            if len(self.pairs) < self.max_pairs:
                self.pairs[key] = key
        cdef object loan = state  # its __slots__ are set as Python attributes
        loan.loan_id = loan_id
        loan._borrower = borrower
        loan._labels = triple
        loan.guard = guard
        PyObject_GC_UnTrack(<void*>loan)  # as LoanState.__new__ does (see _gc_untracker)
        return state, pos


cdef object read_guard(bytes record, const unsigned char* data, Py_ssize_t n, Py_ssize_t* pos,
                       dict labels, Py_ssize_t max_labels, object restored_guard):
    """The guard record after its union branch: the values' array blocks, then the zone."""
    cdef long long count, block_size
    cdef Py_ssize_t scan = pos[0] + 1, total = 0
    # First pass: the blocks' total (a negative count is followed by the block's byte size).
    while True:
        read_long(data, n, &scan, &count)
        if count == 0:
            break
        if count < 0:
            count = -count
            read_long(data, n, &scan, &block_size)
        if count > (n - scan) // 8:
            raise ValueError("guard values overrun the record")
        total += <Py_ssize_t>count
        scan += 8 * <Py_ssize_t>count
    cdef array values = clone(_DOUBLES_TEMPLATE, total, False)
    cdef char* out = values.data.as_chars
    scan = pos[0] + 1
    while True:
        read_long(data, n, &scan, &count)
        if count == 0:
            break
        if count < 0:
            count = -count
            read_long(data, n, &scan, &block_size)
        memcpy(out, data + scan, 8 * <Py_ssize_t>count)
        out += 8 * <Py_ssize_t>count
        scan += 8 * <Py_ssize_t>count
    pos[0] = scan
    zone = read_label(record, data, n, pos, labels, max_labels)
    return restored_guard(values, zone)

