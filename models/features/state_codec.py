"""The changelog's ``LoanState`` codec: the same bytes as the Avro serde, ten times faster.

The scorer writes one changelog record per loan touched in every transaction and reads them
all back on restore, so this codec is on the hot path twice. ``LoanState`` v2 is a fixed
layout -- two strings, the state array's doubles in ``SLOTS`` order, four nullable fields, and
(v3) the nullable guard (an array of doubles and a nullable time zone; v4 adds one double,
``reported_income``, to the array) --
and Avro encodes a double as its 8 little-endian IEEE bytes, so the state array *is* the
middle of the Avro body: ``array.tobytes()`` writes it and ``array.frombytes()`` reads it,
instead of a dict of 47 fields walked by a generic encoder.

The fast path is taken only when the schema has exactly that layout (checked field by field
when the codec is built) on a little-endian machine; any other writer version of a record
being decoded goes through :class:`schemas.AvroSerde` with schema resolution. Tests check
the bytes are identical to fastavro's.

>>> from schemas.events import make_event
>>> opened = make_event("e1", "L1", "B1", 0, "LoanOpened", dict(
...     age=40, gender="Female", employment_type="Salaried", monthly_income=5000.0,
...     num_dependents=1, loan_amount=12000.0, loan_tenure_months=12, interest_rate=9.5,
...     loan_type="Personal", collateral_value=0.0, monthly_emi=1050.0))
>>> codec = LoanStateCodec()
>>> state = LoanState.open(opened)
>>> codec.encode(state) == AvroSerde("LoanState").encode(state.to_record())
True
>>> repr(codec.decode(codec.encode(state)).to_record()) == repr(state.to_record())  # NaN
True
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Any, Protocol

from models.features import state as _state_module
from models.features.guard_state import GuardState, restored_guard
from models.features.state import SCORE, SLOTS, LoanState
from models.native import load_kernel
from schemas import AvroSerde, SchemaDecodeError
from schemas.serde import HEADER_SIZE, MAGIC

_codec_kernel = load_kernel("features._codec_kernel")  # None: the Python fast path below
_encode_compiled = _codec_kernel.encode_state if _codec_kernel else None
_StateDecoder = _codec_kernel.StateDecoder if _codec_kernel else None


class _Decoder(Protocol):  # _codec_kernel.StateDecoder
    def decode(self, data: bytes, pos: int) -> tuple[LoanState, int]: ...


_SLOT_COUNT = len(SLOTS)
_DOUBLES = 8 * _SLOT_COUNT
_NULL = b"\x00"
_SOME = b"\x02"  # union branch 1, zig-zag encoded
_PACK_DOUBLE = struct.Struct("<d")
_MAX_LABELS = 1024  # distinct decision labels shared; a policy has a few dozen at most
_OPTIONAL = (
    ("strategy", "string"),
    ("risk_tier", "string"),
    ("risk_score", "double"),
    ("segment", "string"),
)


def _long(n: int) -> bytes:
    """Avro ``long`` (zig-zag varint) of a non-negative ``n``."""
    n <<= 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the Avro ``long`` at ``pos``."""
    shift = n = 0
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7


def _string(text: str) -> bytes:
    raw = text.encode()
    return _long(len(raw)) + raw


_GUARD_FIELDS = [
    ("values", {"type": "array", "items": "double"}),
    ("time_zone", ["null", "string"]),
]


def _has_fixed_layout(schema: dict[str, Any]) -> bool:
    """Is ``schema`` exactly: loan_id, borrower_id (strings), SLOTS (doubles), _OPTIONAL, then
    guard (null or a record of a double array and a nullable string)?"""
    expected = [
        ("loan_id", "string"),
        ("borrower_id", "string"),
        *((name, "double") for name in SLOTS),
        *((name, ["null", kind]) for name, kind in _OPTIONAL),
    ]
    fields = schema.get("fields", [])
    actual = [(f["name"], f["type"]) for f in fields[:-1]]
    if actual != expected or fields[-1]["name"] != "guard":
        return False
    guard = fields[-1]["type"]
    return (
        isinstance(guard, list)
        and guard[0] == "null"
        and [(f["name"], f["type"]) for f in guard[1]["fields"]] == _GUARD_FIELDS
    )


def _guard_bytes(guard: GuardState | None) -> bytes:
    """Avro of the nullable guard: branch, the array (one block, then the 0 end), time zone."""
    if guard is None:
        return _NULL
    n = len(guard)
    zone = _NULL if guard.time_zone is None else _SOME + _string(guard.time_zone)
    return b"".join((_SOME, _long(n), guard.tobytes(), _NULL if n else b"", zone))


class LoanStateCodec:
    """Encode a :class:`LoanState` to, and decode it from, ``LoanState`` single-object Avro."""

    def __init__(self, native: bool = True) -> None:
        """``native=False``: never use the compiled encoder and decoder (tests compare them)."""
        self._serde = AvroSerde("LoanState")
        self._header = MAGIC + self._serde.writer.fingerprint
        # v1 records are read as v1 (resolving them to v2 would drop their recent ids, which
        # LoanState.from_record carries into the fingerprint).
        self._v1 = AvroSerde("LoanState", reader_version=1)
        self._v1_header = MAGIC + self._v1.reader.fingerprint
        self._labels: dict[bytes, str] = {}
        self.fast = sys.byteorder == "little" and _has_fixed_layout(self._serde.writer.raw)
        self.compiled = self.fast and _encode_compiled is not None and native
        self._decoder: _Decoder | None = None
        if self.fast and _StateDecoder is not None and native:
            self._decoder = _StateDecoder(
                LoanState("", ""),  # cloned: the states' type, size and no-score NaN
                self._labels,
                _MAX_LABELS,
                _state_module._LABELS,
                _state_module._MAX_LABELS,
                restored_guard,
                _SLOT_COUNT,
            )
        self.compiled_decode = self._decoder is not None

    def encode(self, state: LoanState) -> bytes:
        if not self.fast:
            return self._serde.encode(state.to_record())
        if self.compiled:
            return _encode_compiled(self._header, state, _SLOT_COUNT)
        return self._encode_python(state)

    def _encode_python(self, state: LoanState) -> bytes:
        """The reference of the fast path (``models/features/_codec_kernel.pyx`` is its compiled
        twin)."""
        borrower = state._borrower  # kept UTF-8 encoded: written as is
        values = state.tobytes()  # the SLOTS values, then the score
        parts = [
            self._header,
            _string(state.loan_id),
            _long(len(borrower)),
            borrower,
            values[:_DOUBLES],
        ]
        for value in (state.strategy, state.risk_tier):
            parts.append(_NULL if value is None else _SOME + _string(value))
        score = state[SCORE]
        parts.append(_NULL if score != score else _SOME + values[_DOUBLES:])
        parts.append(_NULL if state.segment is None else _SOME + _string(state.segment))
        parts.append(_guard_bytes(state.guard))
        return b"".join(parts)

    def decode(self, data: bytes) -> LoanState:
        """The state in ``data``; :class:`SchemaDecodeError` if it is not a LoanState."""
        if not (self.fast and data[:HEADER_SIZE] == self._header):
            if data[:HEADER_SIZE] == self._v1_header:
                return LoanState.from_record(self._v1.decode(data))
            return LoanState.from_record(self._serde.decode(data))  # other versions: resolve
        try:
            if self._decoder is not None:
                state, end = self._decoder.decode(data, HEADER_SIZE)
            else:
                state, end = self._decode_body(data)
        except (IndexError, UnicodeDecodeError, struct.error, ValueError) as error:
            raise SchemaDecodeError("undecodable", f"LoanState body is corrupt: {error}") from None
        if end != len(data):
            raise SchemaDecodeError(
                "undecodable", f"{len(data) - end} trailing bytes after the record"
            )
        return state

    def _decode_body(self, data: bytes) -> tuple[LoanState, int]:
        """The reference of the fast path's decoder (``decode_state`` in
        ``models/features/_codec_kernel.pyx`` is its compiled twin, ~10x less CPU per record:
        a restore's cost was 80% this method, see ``bench/state.py --profile``)."""
        loan_id, pos = self._read_string(data, HEADER_SIZE)
        borrower_id, pos = self._read_string(data, pos)
        # Filled in place (frombytes() would over-allocate the array by 40 bytes per loan).
        state = LoanState(loan_id, borrower_id)
        memoryview(state).cast("B")[:_DOUBLES] = memoryview(data)[pos : pos + _DOUBLES]
        pos += _DOUBLES
        strategy, pos = self._read_optional_string(data, pos)
        tier, pos = self._read_optional_string(data, pos)
        if data[pos] == 2:
            state[SCORE] = _PACK_DOUBLE.unpack_from(data, pos + 1)[0]
            pos += 9
        elif data[pos] == 0:
            pos += 1
        else:
            raise ValueError(f"bad union branch {data[pos]} of risk_score")
        segment, pos = self._read_optional_string(data, pos)
        state.set_labels(strategy, tier, segment)
        state.guard, pos = self._read_guard(data, pos)
        return state, pos

    def _read_guard(self, data: bytes, pos: int) -> tuple[GuardState | None, int]:
        branch = data[pos]
        if branch == 0:
            return None, pos + 1
        if branch != 2:
            raise ValueError(f"bad union branch {branch} of guard")
        values: list[float] = []
        count, pos = _read_long(data, pos + 1)
        while count:  # Avro array blocks; a negative count is followed by the block's size
            if count < 0:
                count = -count
                _, pos = _read_long(data, pos)
            end = pos + 8 * count
            if end > len(data):
                raise ValueError("guard values overrun the record")
            values += struct.unpack_from(f"<{count}d", data, pos)
            count, pos = _read_long(data, end)
        zone, pos = self._read_optional_string(data, pos)
        return restored_guard(array("d", values), zone), pos

    @staticmethod
    def _read_string(data: bytes, pos: int) -> tuple[str, int]:
        size, pos = _read_long(data, pos)
        end = pos + size
        if size < 0 or end > len(data):
            raise ValueError(f"string of {size} bytes overruns the record")
        return data[pos:end].decode(), end

    def _read_optional_string(self, data: bytes, pos: int) -> tuple[str | None, int]:
        """A decision label (strategy, tier, segment): one of a handful of values, so each is
        decoded once and shared by every loan holding it (a string per loan would be ~150
        bytes per restored loan more than the stream's own states, which share them)."""
        branch = data[pos]
        if branch == 0:
            return None, pos + 1
        if branch != 2:
            raise ValueError(f"bad union branch {branch}")
        size, start = _read_long(data, pos + 1)
        end = start + size
        if size < 0 or end > len(data):
            raise ValueError(f"string of {size} bytes overruns the record")
        raw = data[start:end]
        label = self._labels.get(raw)
        if label is None:
            label = raw.decode()
            if len(self._labels) < _MAX_LABELS:
                self._labels[raw] = label
        return label, end
