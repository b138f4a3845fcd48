"""The Avro event contract: every released schema version and the single-object serde."""

from schemas.registry import SchemaRegistry, default_registry
from schemas.serde import AvroSerde, SchemaDecodeError

__all__ = ["AvroSerde", "SchemaDecodeError", "SchemaRegistry", "default_registry"]
