"""Arrow schemas derived from the pydantic record models.

Every record type is defined once, as a pydantic model; its Arrow schema is computed
from the model's type annotations here, so the two can never drift apart.
"""

from __future__ import annotations

import enum
import types
import typing
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel

ModelT = TypeVar("ModelT", bound=BaseModel)

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.binary(),
}


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner type, nullable) for `X | None` / `Optional[X]`; other unions are refused."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unions other than Optional have no Arrow type: {annotation!r}")
        return args[0], True
    return annotation, False


def arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type of one (non-optional) annotation."""
    if get_origin(annotation) is typing.Annotated:
        return arrow_type(get_args(annotation)[0])
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    origin = get_origin(annotation)
    if origin is Literal:
        kinds = {type(v) for v in get_args(annotation)}
        if len(kinds) != 1 or next(iter(kinds)) not in _SCALARS:
            raise TypeError(f"Literal values must share one scalar type: {annotation!r}")
        return _SCALARS[next(iter(kinds))]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return pa.string()  # enums are stored by value, readable without our code
    if origin in (list, tuple) or origin is typing.Sequence:
        (item,) = get_args(annotation)[:1]
        inner, nullable = _unwrap_optional(item)
        return pa.list_(pa.field("item", arrow_type(inner), nullable=nullable))
    # dict fields are refused on purpose: Arrow maps load poorly in HF `datasets`;
    # give such data named fields or a nested model instead.
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(list(_fields(annotation)))
    raise TypeError(f"no Arrow type for annotation {annotation!r}")


def _fields(model: type[BaseModel]) -> typing.Iterator[pa.Field]:
    for name, info in model.model_fields.items():
        inner, nullable = _unwrap_optional(info.annotation)
        yield pa.field(name, arrow_type(inner), nullable=nullable)


@cache
def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a record model (cached: models are immutable classes)."""
    return pa.schema(list(_fields(model)))


def to_table(records: typing.Sequence[BaseModel], model: type[BaseModel]) -> pa.Table:
    """Records of one model type as an Arrow table with the derived schema."""
    rows = [r.model_dump(mode="python") for r in records]
    return pa.Table.from_pylist(rows, schema=arrow_schema(model))


def from_table(table: pa.Table, model: type[ModelT]) -> list[ModelT]:
    """Validate every row of an Arrow table back into `model` instances."""
    return [model.model_validate(row) for row in table.to_pylist()]
