# cython: language_level=3
"""Compiled twin of the scorer's per-event path: LoanEvent v4 bytes -> state -> feature row.

The reference implementation -- and the definition of every rule -- is Python:
``schemas.AvroSerde.decode`` (fastavro), ``models.features.state.LoanState.open`` / ``.apply`` /
``.features`` and ``consumer.processor.model_row``. :class:`EventKernel` does the same for
the *happy path only*: it reads the Avro body in place (no dict per event), checks every
condition under which the reference would refuse the event, and hands anything unusual back
to the caller, which runs the reference code on it. So the kernel never decides a dead letter,
a duplicate or an error message; it only decides "applied exactly as the reference would",
and ``tests/unit/models/test_models_event_kernel.py`` requires the resulting states and rows to be equal
bit for bit, over valid, duplicate, corrupt and adversarial input.

What must never change without changing the reference in the same way: the order of the
floating-point operations in ``_apply_body``, ``_open`` and ``_features`` (each mirrors one
Python expression), and "refuse when in doubt": any check that is not certain falls back.

A call attempt's or conversation's guardrail bookkeeping (``models.features.guard_state``) is
the reference's own ``LoanState.track``, called from here. Holds and borrower time zones fall
back (rare, and the reference validates the zone), and so do jurisdictions (v3). A v4 income
report (``CollectionAttempt.income_report``) is applied here: it is how the learned strategy
policy sees an income shock, so the simulator's and a lender's shocked borrowers carry it.
"""

cimport cython
from cpython.array cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport NAN, INFINITY, fmod, floor, copysign
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy

import hashlib

from models.features import loan_id as _loan_id
from models.features import state as _state
from models.features.columns import encode as _encode_category

BODY_KINDS = ("LoanOpened", "PaymentReceived", "PaymentMissed", "CollectionAttempt",
              "LoanClosed")  # short names, by Avro union branch

# -- the state layout (models.features.state.SLOTS), checked against the Python module at import
cdef enum:
    AGE = 0
    GENDER = 1
    EMPLOYMENT = 2
    INCOME = 3
    DEPENDENTS = 4
    AMOUNT = 5
    TENURE = 6
    RATE = 7
    LOAN_TYPE = 8
    COLLATERAL = 9
    EMI = 10
    OPENED_AT = 11
    LAST_EVENT_AT = 12
    LAST_DUE = 13
    INSTALLMENTS = 14
    ON_TIME = 15
    LATE = 16
    MISSED = 17
    CONSECUTIVE = 18
    DPD = 19
    DPD_PREV = 20
    DPD_PREV2 = 21
    MAX_DPD = 22
    OUTSTANDING = 23
    OUT_BEFORE = 24
    LAST_DUE_AMT = 25
    LAST_PAID = 26
    TOTAL_DUE = 27
    TOTAL_PAID = 28
    PAID_FULL = 29
    ZERO_PAY = 30
    SUM_OUT = 31
    ATTEMPTS = 32
    METHOD = 33
    LEGAL = 34
    CLOSED = 35
    WATERMARK_ID0 = 36
    WATERMARK_ID1 = 37
    FINGERPRINT0 = 38
    LAST_PAYMENT_AT = 41
    REPORTED_INCOME = 42
    FINGERPRINT_WORDS = 3
    FINGERPRINT_BITS = 156
    FINGERPRINT_PROBES = 4
    PROBE_MASK = 8191  # 13 bits
    N_FEATURES = 40

cdef enum:
    DAY_MS = 86400000
    MAX_DAYS = 36600  # 100 * 366: models.features.state._MAX_DAYS
cdef double FEATURE_LIMIT = 1e38  # consumer.processor._FEATURE_LIMIT
cdef int64_t EXACT_LIMIT = 9007199254740992  # 2**53: beyond it an int -> double comparison may round
cdef uint64_t HASH_MASK = 4503599627370495  # (1 << 52) - 1: models.features.state._HASH_MASK

# LoanEvent writer versions whose layouts EventKernel reads (1..VERSIONS).
cdef enum:
    VERSIONS = 4

# Body types in the union's order (the Avro branch index), as models.features.state names them.
cdef enum:
    CHANNEL_CALL = 0  # ContactChannel's first symbol
    WRITTEN_OFF_REASON = 2  # CloseReason: REPAID, SETTLED, WRITTEN_OFF, OTHER
    INCOME_SOURCES = 4  # IncomeSource: BORROWER_DISCLOSURE, INCOME_VERIFICATION, BUREAU_REFRESH, OTHER

cdef enum:
    OPENED = 0
    RECEIVED = 1
    MISSED_EVENT = 2
    COLLECTION = 3
    CLOSED_EVENT = 4

_LAYOUT = (AGE, GENDER, EMPLOYMENT, INCOME, DEPENDENTS, AMOUNT, TENURE, RATE, LOAN_TYPE,
           COLLATERAL, EMI, OPENED_AT, LAST_EVENT_AT, LAST_DUE, INSTALLMENTS, ON_TIME, LATE,
           MISSED, CONSECUTIVE, DPD, DPD_PREV, DPD_PREV2, MAX_DPD, OUTSTANDING, OUT_BEFORE,
           LAST_DUE_AMT, LAST_PAID, TOTAL_DUE, TOTAL_PAID, PAID_FULL, ZERO_PAY, SUM_OUT,
           ATTEMPTS, METHOD, LEGAL, CLOSED)
assert _LAYOUT == tuple(range(len(_LAYOUT))) == (
    _state.AGE, _state.GENDER, _state.EMPLOYMENT, _state.INCOME, _state.DEPENDENTS,
    _state.AMOUNT, _state.TENURE, _state.RATE, _state.LOAN_TYPE, _state.COLLATERAL, _state.EMI,
    _state.OPENED_AT, _state.LAST_EVENT_AT, _state.LAST_DUE, _state.INSTALLMENTS,
    _state.ON_TIME, _state.LATE, _state.MISSED, _state.CONSECUTIVE, _state.DPD,
    _state.DPD_PREV, _state.DPD_PREV2, _state.MAX_DPD, _state.OUTSTANDING, _state.OUT_BEFORE,
    _state.LAST_DUE_AMT, _state.LAST_PAID, _state.TOTAL_DUE, _state.TOTAL_PAID,
    _state.PAID_FULL, _state.ZERO_PAY, _state.SUM_OUT, _state.ATTEMPTS, _state.METHOD,
    _state.LEGAL, _state.CLOSED), "models.features.state.SLOTS changed: update the kernel's layout"
assert _state.WATERMARK_ID0 == WATERMARK_ID0 and _state.WATERMARK_ID1 == WATERMARK_ID1
assert _state.FINGERPRINT0 == FINGERPRINT0 and _state.FINGERPRINT_WORDS == FINGERPRINT_WORDS
assert _state.FINGERPRINT_BITS == FINGERPRINT_BITS and _state.FINGERPRINT_PROBES == FINGERPRINT_PROBES
assert _state._PROBE_MASK == PROBE_MASK and _state.MANY_AT_WATERMARK == -1.0
assert len(_state.FEATURE_NAMES) == N_FEATURES
assert _state.LAST_PAYMENT_AT == LAST_PAYMENT_AT == FINGERPRINT0 + FINGERPRINT_WORDS
assert _state.REPORTED_INCOME == REPORTED_INCOME == LAST_PAYMENT_AT + 1
assert _state.SCORE == REPORTED_INCOME + 1 and _state.DAY_MS == DAY_MS
assert _state._MAX_DAYS == MAX_DAYS and _state._HASH_MASK == HASH_MASK
assert _state.CLOSED_OTHER == 1.0 and _state.WRITTEN_OFF == 2.0


# models.features.loan_id's rule as a byte table: 2 = may start an id, 1 = may follow, 0 = never
# (every byte >= 0x80 is 0: the rule is ASCII, so a non-ASCII id is refused by both paths).
cdef unsigned char LOAN_ID_BYTE[256]  # static: zero-initialised
for _c in _loan_id.CHARACTERS.encode():
    LOAN_ID_BYTE[_c] = 1
for _c in _loan_id.FIRST_CHARACTERS.encode():
    LOAN_ID_BYTE[_c] = 2
cdef Py_ssize_t LOAN_ID_MAX = _loan_id.MAX_LENGTH


cdef inline bint valid_loan_id(const unsigned char* s, Py_ssize_t n) noexcept:
    """models.features.loan_id.is_valid_loan_id over the id's UTF-8 bytes."""
    cdef Py_ssize_t i
    if n < 1 or n > LOAN_ID_MAX or LOAN_ID_BYTE[s[0]] != 2:
        return False
    for i in range(1, n):
        if LOAN_ID_BYTE[s[i]] == 0:
            return False
    return True


cdef struct Reader:
    const unsigned char* p
    const unsigned char* end
    bint bad


cdef inline int64_t read_long(Reader* r) noexcept:
    """Avro zig-zag varint (at most 10 bytes); sets ``bad`` on truncation or overlength."""
    cdef uint64_t acc = 0, b
    cdef int shift = 0
    while True:
        if r.p >= r.end or shift > 63:
            r.bad = True
            return 0
        b = r.p[0]
        r.p += 1
        acc |= (b & 0x7F) << shift
        if not (b & 0x80):
            break
        shift += 7
    return <int64_t>(acc >> 1) ^ -(<int64_t>(acc & 1))


cdef inline int64_t read_int(Reader* r) noexcept:
    cdef int64_t v = read_long(r)
    if v < -2147483648 or v > 2147483647:
        r.bad = True  # fastavro's view of an overlong int is not ours to guess: fall back
    return v


cdef inline double read_double(Reader* r) noexcept:
    cdef double v = 0.0
    if r.end - r.p < 8:
        r.bad = True
        return 0.0
    memcpy(&v, r.p, 8)  # little-endian on every platform CPython wheels target here
    r.p += 8
    return v


cdef inline Py_ssize_t read_string(Reader* r, const unsigned char** start) noexcept:
    start[0] = r.p
    cdef int64_t n = read_long(r)
    if r.bad or n < 0 or n > r.end - r.p:
        r.bad = True
        return 0
    start[0] = r.p
    r.p += n
    return <Py_ssize_t>n


@cython.cdivision(True)
cdef inline double float_floordiv(double vx, double wx) noexcept:
    """CPython's ``float.__floordiv__`` (Objects/floatobject.c, _float_div_mod)."""
    cdef double mod = fmod(vx, wx)
    cdef double div = (vx - mod) / wx
    cdef double floordiv
    if mod:
        if (wx < 0) != (mod < 0):
            div -= 1.0
    if div:
        floordiv = floor(div)
        if div - floordiv > 0.5:
            floordiv += 1.0
    else:
        floordiv = copysign(0.0, vx / wx)
    return floordiv


cdef inline int64_t int_floordiv(int64_t a, int64_t b) noexcept:
    cdef int64_t q = a // b  # Cython keeps Python's floor semantics here (cdivision off)
    return q


cdef inline bint bad_amount(double value) noexcept:
    # models.features.state._amount: `not value >= 0.0 or value == inf` (catches NaN).
    return not value >= 0.0 or value == INFINITY


cdef inline bint bad_optional_amount(double value) noexcept:
    # models.features.state._optional_amount: NaN is allowed (missing), negatives and inf are not.
    return value == value and (value < 0 or value == INFINITY)


cdef inline double optional_amount(double value) noexcept:
    return NAN if value != value else value


cdef inline void remember(double* v, double h) noexcept:
    """``LoanState._remember``: set the id's probe bits in the fingerprint (exact integers < 2**52
    in doubles, as the reference's ``float(int(word) | bit)``)."""
    cdef uint64_t bits = <uint64_t>h, p
    cdef int i
    for i in range(FINGERPRINT_PROBES):
        p = (bits & PROBE_MASK) % FINGERPRINT_BITS
        v[FINGERPRINT0 + p // 52] = <double>((<uint64_t>v[FINGERPRINT0 + p // 52]) |
                                             ((<uint64_t>1) << (p % 52)))
        bits >>= 13


cdef struct Body:
    int kind
    # LoanOpened
    int64_t age, dependents, tenure
    double income, amount, rate, collateral, emi
    const unsigned char* gender
    Py_ssize_t gender_len
    const unsigned char* employment
    Py_ssize_t employment_len
    const unsigned char* loan_type
    Py_ssize_t loan_type_len
    # payments
    int64_t due, dpd
    double amount_due, paid, outstanding
    # CollectionAttempt
    int64_t method
    bint legal, call, conversation, reported
    double reported_income  # v4 income_report.monthly_income, when reported
    # LoanClosed: CloseReason's branch (WRITTEN_OFF_REASON keeps the recoveries after it)
    int64_t reason


cdef class EventKernel:
    """Applies LoanEvent v1, v2, v3 and v4 records to ``LoanState`` arrays and writes their
    feature rows.

    Each writer version's layout is read as the reference reads it through fastavro's schema
    resolution with v4 as the reader: fields a version lacks take v4's defaults (v1 and v2
    ``LoanOpened``: no time zone, v1 and v2 no jurisdiction; v1 ``CollectionAttempt``: no
    channel, no conversation, no hold; v1 to v3: no income report). The enums are the same in
    all four. Before, only v3
    was read here, and a stream of v1 records (an upstream producer not yet upgraded) cost
    about 4x the CPU per event in the reference path (``bench.revisions``, docs/BENCHMARKS.md).

    ``apply_batch`` walks a partition batch in offset order; a record it cannot apply with
    certainty goes to the caller's ``fallback`` at its place in the sequence, so the result
    is the reference's, record for record.
    """

    cdef bytes _headers  # v1 to v4 single-object headers, 10 bytes each
    cdef object _blake2b
    cdef object _new_state
    cdef double _method_codes[5]

    def __init__(self, headers) -> None:
        """``headers``: the single-object headers (C3 01 + fingerprint) of LoanEvent v1 to v4,
        in that order: the writer schemas whose layouts this kernel reads; other writers fall
        back."""
        headers = tuple(headers)
        if len(headers) != VERSIONS or any(len(h) != 10 for h in headers):
            raise ValueError(f"{VERSIONS} single-object Avro headers of 10 bytes each")
        self._headers = b"".join(headers)
        self._blake2b = hashlib.blake2b
        self._new_state = _state.LoanState
        symbols = ("CALLS", "SETTLEMENT_OFFER", "DEBT_COLLECTORS", "LEGAL_NOTICE", "OTHER")
        for i, symbol in enumerate(symbols):
            self._method_codes[i] = _encode_category("last_collection_method", symbol)

    cdef double _event_hash(self, const unsigned char* data, Py_ssize_t n) except? -1.0:
        # models.features.state.event_id_hash: blake2b-64 of the UTF-8 id, little endian, 52 bits.
        cdef bytes digest = self._blake2b(data[:n], digest_size=8).digest()
        cdef uint64_t h = 0
        memcpy(&h, PyBytes_AS_STRING(digest), 8)
        h &= HASH_MASK
        return <double>(h if h else 1)  # 0 marks an empty watermark slot

    def apply_batch(self, list batch, dict states, dict undo, double[:, ::1] rows,
                    int64_t[::1] occurred, double[:, ::1] facts, list out_guards,
                    list out_states, list out_offsets, list out_values,
                    int64_t[::1] counts, Py_ssize_t n, fallback):
        """Apply ``batch``'s ``(offset, key, value)`` records from row ``n`` on.

        An applied record adds its state, offset and value to the ``out_`` lists, its
        occurred_at to ``occurred[n]``, its features to ``rows[n]``, its guardrail facts to
        ``facts[n]`` (last payment, days past due, reported income) and ``out_guards`` (a copy of its guard, or
        None: ``PartitionProcessor._snapshot``), and 1 to
        ``counts[body type]``. Any other record is passed to ``fallback(record, n)``, which
        returns the next free row. Returns the next free row.
        """
        cdef Py_ssize_t i, kind
        cdef int64_t at = 0
        cdef object record, state, guard
        cdef double* v
        for record in batch:
            state = self._apply_one(record, states, undo, &at, &kind)
            if state is None:
                n = fallback(record, n)
                continue
            self._features(<array>state, &rows[n, 0])
            occurred[n] = at
            v = (<array>state).data.as_doubles
            facts[n, 0] = v[LAST_PAYMENT_AT]
            facts[n, 1] = v[DPD]
            facts[n, 2] = v[REPORTED_INCOME]
            guard = state.guard
            out_guards.append(None if guard is None else guard.copy())
            counts[kind] += 1
            out_states.append(state)
            out_offsets.append((<tuple>record)[0])
            out_values.append((<tuple>record)[2])
            n += 1
        return n

    cdef object _apply_one(self, tuple record, dict states, dict undo, int64_t* at_out,
                           Py_ssize_t* kind_out):
        """The record's state after applying it, or None when the reference must handle it."""
        cdef object key = record[1], value = record[2]
        if type(value) is not bytes or type(key) is not bytes:
            return None
        cdef Py_ssize_t size = PyBytes_GET_SIZE(value)
        cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(value)
        cdef int version = self._version(data, size)
        if version == 0:
            return None
        cdef Reader r
        r.p, r.end, r.bad = data + 10, data + size, False
        cdef const unsigned char* event_id
        cdef const unsigned char* loan_id
        cdef const unsigned char* borrower_id
        cdef Py_ssize_t event_id_len = read_string(&r, &event_id)
        cdef Py_ssize_t loan_id_len = read_string(&r, &loan_id)
        cdef Py_ssize_t borrower_id_len = read_string(&r, &borrower_id)
        cdef int64_t at = read_long(&r)
        cdef Body body
        if not self._read_body(&r, &body, version) or r.bad or r.p != r.end:
            return None  # undecodable, trailing bytes, or values only the reference may judge
        if at <= -EXACT_LIMIT or at >= EXACT_LIMIT:
            return None
        if not valid_loan_id(loan_id, loan_id_len):
            return None  # invalid_loan_id: the reference dead-letters it
        # The record key must be the loan id (else: key_mismatch, the reference's call).
        if PyBytes_GET_SIZE(key) != loan_id_len or memcmp(PyBytes_AS_STRING(key), loan_id,
                                                         loan_id_len) != 0:
            return None
        try:  # strings must be valid UTF-8, as fastavro requires
            loan = PyUnicode_DecodeUTF8(<const char*>loan_id, loan_id_len, NULL)
            PyUnicode_DecodeUTF8(<const char*>event_id, event_id_len, NULL)
            borrower = PyUnicode_DecodeUTF8(<const char*>borrower_id, borrower_id_len, NULL)
        except UnicodeDecodeError:
            return None
        cdef double h = self._event_hash(event_id, event_id_len)
        cdef PyObject* found = PyDict_GetItem(states, loan)
        cdef object state
        if found == NULL:
            if body.kind != OPENED:
                return None  # unknown_loan
            state = self._open(loan, borrower, &body, at, h)
            if state is None:
                return None
            if loan not in undo:
                undo[loan] = None
            PyDict_SetItem(states, loan, state)
        else:
            state = <object>found
            if not self._can_apply(<array>state, &body, at, h):
                return None
            if loan not in undo:
                undo[loan] = state.copy()
            self._track(state, &body, at)
            self._apply_body(<array>state, &body, at, h)
        at_out[0] = at
        kind_out[0] = body.kind
        return state

    cdef int _track(self, object state, Body* b, int64_t at) except -1:
        """``LoanState.track`` of a contact attempt (the reference's own code)."""
        if b.kind == COLLECTION and (b.call or b.conversation):
            state.track(at, b.call, b.conversation)
        return 0

    cdef int _version(self, const unsigned char* data, Py_ssize_t size) noexcept:
        """The LoanEvent writer version whose header starts ``data`` (newest first), 0: none."""
        cdef const char* headers = PyBytes_AS_STRING(self._headers)
        cdef int version
        if size < 10:
            return 0
        for version in range(VERSIONS, 0, -1):
            if memcmp(data, headers + 10 * (version - 1), 10) == 0:
                return version
        return 0

    cdef bint _read_body(self, Reader* r, Body* b, int version) noexcept:
        cdef int64_t branch, channel
        b.call = b.conversation = b.reported = False
        b.kind = <int>read_long(r)
        if r.bad:
            return False
        if b.kind == OPENED:
            b.age = read_int(r)
            b.gender_len = read_string(r, &b.gender)
            b.employment_len = read_string(r, &b.employment)
            b.income = read_double(r)
            b.dependents = read_int(r)
            b.amount = read_double(r)
            b.tenure = read_int(r)
            b.rate = read_double(r)
            b.loan_type_len = read_string(r, &b.loan_type)
            b.collateral = read_double(r)
            b.emi = read_double(r)
            if version >= 2 and read_long(r) != 0:  # time_zone set: the reference validates it
                return False
            if version >= 3 and read_long(r) != 0:  # jurisdiction: the reference packs it
                return False
        elif b.kind == RECEIVED:
            b.due = read_int(r)
            b.amount_due = read_double(r)
            b.paid = read_double(r)
            b.outstanding = read_double(r)
        elif b.kind == MISSED_EVENT:
            b.due = read_int(r)
            b.amount_due = read_double(r)
            b.dpd = read_int(r)
            b.outstanding = read_double(r)
        elif b.kind == COLLECTION:
            b.method = read_int(r)
            if not 0 <= read_int(r) <= 4:  # outcome: CollectionOutcome's 5 symbols, unused
                return False
            if r.p >= r.end or r.p[0] > 1:
                return False
            b.legal = r.p[0] == 1
            r.p += 1
            if b.method < 0 or b.method > 4:
                return False
            if version == 1:  # v3's defaults: no channel, no conversation, no hold
                b.call = b.method == 0
                return not r.bad
            branch = read_long(r)  # channel: null, or ContactChannel's 6 symbols
            if branch == 0:
                b.call = b.method == 0  # v1 meaning: CALLS is a call attempt
            elif branch == 1:  # (read_long decodes the zig-zag: the enum is branch 1, byte 02)
                channel = read_int(r)
                if not 0 <= channel <= 5:
                    return False
                b.call = channel == CHANNEL_CALL
            else:
                return False
            if r.p >= r.end or r.p[0] > 1:
                return False
            b.conversation = r.p[0] == 1
            r.p += 1
            if read_long(r) != 0:  # a compliance hold: the reference applies it
                return False
            if version >= 4:
                branch = read_long(r)  # income_report: null, or an IncomeReport
                if branch == 1:
                    b.reported = True
                    b.reported_income = read_double(r)
                    if not 0 <= read_int(r) < INCOME_SOURCES or bad_amount(b.reported_income):
                        return False  # (invalid_amount: the reference dead-letters it)
                elif branch != 0:
                    return False
        elif b.kind == CLOSED_EVENT:
            b.reason = read_int(r)
            if not 0 <= b.reason <= 3 or r.bad:  # reason: CloseReason's 4 symbols
                return False
        else:
            return False
        return not r.bad

    # -- LoanState.open ----------------------------------------------------------------------

    cdef object _open(self, str loan, str borrower, Body* b, int64_t at, double h):
        if bad_optional_amount(b.income) or bad_optional_amount(b.amount) or \
                bad_optional_amount(b.rate) or bad_optional_amount(b.collateral) or \
                bad_optional_amount(b.emi):
            return None
        try:
            gender = PyUnicode_DecodeUTF8(<const char*>b.gender, b.gender_len, NULL)
            employment = PyUnicode_DecodeUTF8(<const char*>b.employment, b.employment_len, NULL)
            loan_type = PyUnicode_DecodeUTF8(<const char*>b.loan_type, b.loan_type_len, NULL)
        except UnicodeDecodeError:
            return None
        cdef double gender_code = _encode_category("gender", gender)
        cdef double employment_code = _encode_category("employment_type", employment)
        cdef double loan_type_code = _encode_category("loan_type", loan_type)
        state = self._new_state(loan, borrower)
        cdef double* v = (<array>state).data.as_doubles
        v[AGE] = <double>b.age if 0 < b.age < 150 else NAN
        v[GENDER] = gender_code
        v[EMPLOYMENT] = employment_code
        v[INCOME] = optional_amount(b.income)
        v[DEPENDENTS] = NAN if b.dependents < 0 else <double>b.dependents
        v[AMOUNT] = optional_amount(b.amount)
        v[TENURE] = <double>b.tenure if b.tenure > 0 else NAN
        v[RATE] = optional_amount(b.rate)
        v[LOAN_TYPE] = loan_type_code
        v[COLLATERAL] = optional_amount(b.collateral)
        v[EMI] = optional_amount(b.emi)
        v[OPENED_AT] = <double>at
        v[LAST_EVENT_AT] = <double>at
        v[LAST_DUE] = NAN
        v[LAST_PAYMENT_AT] = NAN
        v[REPORTED_INCOME] = NAN
        v[OUTSTANDING] = v[AMOUNT] if v[AMOUNT] == v[AMOUNT] else 0.0
        v[OUT_BEFORE] = v[OUTSTANDING]
        v[WATERMARK_ID0] = h
        remember(v, h)
        return state

    # -- LoanState.apply ---------------------------------------------------------------------

    cdef bint _can_apply(self, array state, Body* b, int64_t at, double h) noexcept:
        """Would ``LoanState.apply`` accept this event without raising?"""
        cdef double* v = state.data.as_doubles
        cdef double opened_day
        # Older than the watermark (a replay or late), or at it with ids there already that
        # might be this one: the reference decides (duplicate or out_of_order).
        if <double>at < v[LAST_EVENT_AT]:
            return False
        if <double>at == v[LAST_EVENT_AT] and (v[WATERMARK_ID1] != 0.0 or v[WATERMARK_ID0] == h):
            return False
        if v[CLOSED] or <double>at < v[OPENED_AT]:
            return False
        if b.kind == RECEIVED or b.kind == MISSED_EVENT:
            opened_day = float_floordiv(v[OPENED_AT], <double>DAY_MS)
            if not (opened_day <= <double>b.due <= opened_day + MAX_DAYS):
                return False
            if bad_amount(b.amount_due) or bad_amount(b.outstanding):
                return False
            if b.kind == RECEIVED and bad_amount(b.paid):
                return False
            if b.kind == MISSED_EVENT and not (0 <= b.dpd <= MAX_DAYS):
                return False
            return True
        return b.kind == COLLECTION or b.kind == CLOSED_EVENT  # LoanOpened: already_opened

    cdef void _installment(self, double* v, double due, double amount_due,
                           double outstanding) noexcept:
        if due != v[LAST_DUE]:
            v[SUM_OUT] += outstanding
            v[INSTALLMENTS] += 1.0
            v[DPD_PREV2] = v[DPD_PREV]
            v[DPD_PREV] = v[DPD]
            v[OUT_BEFORE] = v[OUTSTANDING] if v[INSTALLMENTS] > 1 else NAN
            v[LAST_DUE] = due
            v[LAST_PAID] = 0.0
            v[TOTAL_DUE] += amount_due
            v[LAST_DUE_AMT] = amount_due
        else:
            v[SUM_OUT] += outstanding - v[OUTSTANDING]
            if amount_due != v[LAST_DUE_AMT]:
                v[TOTAL_DUE] += amount_due - v[LAST_DUE_AMT]
                v[LAST_DUE_AMT] = amount_due

    cdef void _apply_body(self, array state, Body* b, int64_t at, double h) noexcept:
        cdef double* v = state.data.as_doubles
        if b.kind == RECEIVED:
            self._installment(v, <double>b.due, b.amount_due, b.outstanding)
            v[LAST_PAID] += b.paid
            v[TOTAL_PAID] += b.paid
            if b.paid >= b.amount_due:
                v[PAID_FULL] += 1.0
            elif b.paid == 0.0:
                v[ZERO_PAY] += 1.0
            if int_floordiv(at, DAY_MS) > b.due:
                v[LATE] += 1.0
            else:
                v[ON_TIME] += 1.0
            v[CONSECUTIVE] = 0.0
            v[DPD] = 0.0
            v[OUTSTANDING] = b.outstanding
            if b.paid > 0.0:
                v[LAST_PAYMENT_AT] = <double>at
        elif b.kind == MISSED_EVENT:
            self._installment(v, <double>b.due, b.amount_due, b.outstanding)
            if v[LAST_PAID] == 0.0:
                v[ZERO_PAY] += 1.0
            v[MISSED] += 1.0
            v[CONSECUTIVE] += 1.0
            v[DPD] = <double>b.dpd
            if <double>b.dpd > v[MAX_DPD]:
                v[MAX_DPD] = <double>b.dpd
            v[OUTSTANDING] = b.outstanding
        elif b.kind == COLLECTION:
            v[ATTEMPTS] += 1.0
            v[METHOD] = self._method_codes[b.method]
            if b.legal:
                v[LEGAL] = 1.0
            if b.reported:
                v[REPORTED_INCOME] = b.reported_income
        else:  # LoanClosed: the reference's WRITTEN_OFF / CLOSED_OTHER
            v[CLOSED] = 2.0 if b.reason == WRITTEN_OFF_REASON else 1.0
        # _can_apply let through: at > watermark, or at it with one other id there.
        if <double>at > v[LAST_EVENT_AT]:
            v[LAST_EVENT_AT] = <double>at
            v[WATERMARK_ID0] = h
            v[WATERMARK_ID1] = 0.0
        else:
            v[WATERMARK_ID1] = h
        remember(v, h)

    # -- LoanState.features + processor.model_row ----------------------------------------------

    @cython.cdivision(True)  # every denominator is checked > 0 first, as in the reference
    cdef void _features(self, array state, double* f) noexcept:
        cdef double* v = state.data.as_doubles
        cdef double amount = v[AMOUNT], income = v[INCOME], n = v[INSTALLMENTS]
        cdef double dpd = v[DPD], outstanding = v[OUTSTANDING], total_due = v[TOTAL_DUE]
        cdef double before = v[OUT_BEFORE], history
        cdef int k
        if dpd > 0:
            history = 2.0
        elif v[MISSED] > 0 or v[LATE] > 0:
            history = 1.0
        else:
            history = 0.0
        f[0] = v[AGE]
        f[1] = v[GENDER]
        f[2] = v[EMPLOYMENT]
        f[3] = income
        f[4] = v[DEPENDENTS]
        f[5] = amount
        f[6] = v[TENURE]
        f[7] = v[RATE]
        f[8] = v[LOAN_TYPE]
        f[9] = v[COLLATERAL]
        f[10] = v[EMI]
        f[11] = v[COLLATERAL] / amount if amount > 0 else 0.0
        f[12] = v[EMI] / income if income > 0 else NAN
        f[13] = n
        f[14] = v[ON_TIME]
        f[15] = v[LATE]
        f[16] = v[MISSED]
        f[17] = v[CONSECUTIVE]
        f[18] = v[MISSED] / n if n > 0 else 0.0
        f[19] = dpd
        f[20] = v[DPD_PREV]
        f[21] = v[DPD_PREV2]
        f[22] = v[MAX_DPD]
        f[23] = history
        f[24] = outstanding
        f[25] = outstanding / amount if amount > 0 else 0.0
        f[26] = outstanding - before if before == before else 0.0
        f[27] = v[LAST_DUE_AMT]
        f[28] = v[LAST_PAID]
        f[29] = v[LAST_PAID] / v[LAST_DUE_AMT] if v[LAST_DUE_AMT] > 0 else 1.0
        f[30] = v[TOTAL_PAID]
        f[31] = total_due / n if n > 0 else 0.0
        f[32] = v[TOTAL_PAID] / n if n > 0 else 0.0
        f[33] = v[TOTAL_PAID] / total_due if total_due > 0 else 1.0
        f[34] = v[PAID_FULL]
        f[35] = v[ZERO_PAY]
        f[36] = v[SUM_OUT] / n / amount if n > 0 and amount > 0 else 0.0
        f[37] = v[ATTEMPTS]
        f[38] = v[METHOD]
        f[39] = v[LEGAL]
        # consumer.processor.model_row: values beyond float32 (and inf, NaN) become missing.
        for k in range(N_FEATURES):
            if not (-FEATURE_LIMIT < f[k] < FEATURE_LIMIT):
                f[k] = NAN


def event_ids(bytes value) -> tuple:
    """``(event_id, borrower_id)`` of a record the kernel applied (for its output records)."""
    cdef Reader r
    cdef const unsigned char* event_id
    cdef const unsigned char* loan_id
    cdef const unsigned char* borrower_id
    cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(value)
    r.p, r.end, r.bad = data + 10, data + PyBytes_GET_SIZE(value), PyBytes_GET_SIZE(value) < 10
    cdef Py_ssize_t event_id_len = read_string(&r, &event_id)
    read_string(&r, &loan_id)
    cdef Py_ssize_t borrower_id_len = read_string(&r, &borrower_id)
    if r.bad:
        raise ValueError("not a LoanEvent the kernel applied")
    return (PyUnicode_DecodeUTF8(<const char*>event_id, event_id_len, NULL),
            PyUnicode_DecodeUTF8(<const char*>borrower_id, borrower_id_len, NULL))
