"""Payload schemas: task annotations validate and convert arguments and results.

A task's parameter annotations are its payload schema. :func:`build_schema` reads the
signature once, at decoration time, and compiles a tree of small codec objects. At enqueue
:meth:`PayloadSchema.encode_args` checks that the call binds to the signature and turns every
argument into a JSON-safe value; in the worker :meth:`PayloadSchema.decode_args` turns those
values back into the annotated types. Results use the return annotation the same way. No
``typing.get_type_hints`` or ``inspect.signature`` runs per call. For parameters annotated
``int``, ``str``, ``bool`` or ``None``, or not annotated at all, a value of the matching exact
type passes through after a single set lookup (``float`` takes one extra finiteness check).

Supported annotations and their wire form:

* no annotation, ``Any``, ``object``: JSON-native values (``None``, ``bool``, ``int``,
  finite ``float``, ``str``, ``list``, ``dict`` with ``str`` keys) pass through; ``datetime``,
  ``date``, ``time``, ``timedelta``, ``UUID``, ``Decimal``, ``bytes``, ``tuple``, ``set`` and
  ``frozenset`` become ``{"__tf__": tag, "v": ...}`` so they round-trip without annotations.
  Un-annotated dataclass instances and pydantic models are sent as plain dicts and enum
  members as their value, so they *decode as dict / raw value*. A user dict that contains a
  ``"__tf__"`` key is wrapped so it is not mistaken for a tagged value. Anything else is
  rejected as not JSON-serializable; nothing is ever pickled.
* ``int`` (``bool`` is rejected), ``float`` (``int`` accepted and converted; NaN and infinity
  are rejected because JSON cannot carry them), ``str``, ``bool``, ``None``, ``bytes``
  (base64 string).
* ``datetime``/``date``/``time`` (ISO 8601 strings; the UTC offset is kept, naive stays
  naive, a zone name becomes a fixed offset), ``timedelta`` (float seconds), ``UUID`` and
  ``Decimal`` (strings), ``Enum``/``IntEnum``/``StrEnum``/``Flag`` subclasses (by value).
* ``Optional[X]``/``X | None``, ``Union[...]``, ``Literal[...]``, ``Annotated[X, ...]`` (as
  ``X``), ``NewType`` (as its supertype), ``TypeVar`` (as its bound, constraints or ``Any``).
* ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``set[X]``, ``frozenset[X]``,
  ``Sequence[X]``, ``MutableSequence[X]``, ``AbstractSet[X]``, ``MutableSet[X]`` (JSON lists;
  sets are sorted when their elements allow it so the wire form is deterministic; abstract
  sequences decode as ``list``, ``str`` is not accepted as a ``Sequence``), ``dict[K, V]``,
  ``Mapping[K, V]``, ``MutableMapping[K, V]`` (JSON objects; ``K`` may be any type whose wire
  form is a string, e.g. ``str``, ``UUID``, ``date``, a str-valued ``Enum``, or an int-like
  type such as ``int``/``IntEnum``, sent as its decimal string), bare ``list``/``dict``/... as
  their ``Any``-parameterised forms.
* dataclasses (init fields, recursively; decoded by calling the class; unknown fields are
  rejected, missing fields with defaults are fine), ``TypedDict`` (``__required_keys__``
  honoured, unknown keys rejected), ``NamedTuple`` (a JSON list).
* pydantic v2 ``BaseModel`` subclasses (``model_dump(mode="json")``/``model_validate``; a dict
  is accepted at encode and validated) and protobuf messages
  (``{"__tf__": "protobuf", "type": full_name, "v": base64}``), detected only when those
  libraries are already imported by the code that defines the annotation. Protobuf bytes are
  parsed strictly (fields the annotated message does not define are an error, so the bytes of
  another message type are rejected); a protobuf parameter also accepts the message's proto3
  JSON mapping (a plain object) from producers without protobuf.

Typed decoding also accepts the un-annotated (tagged) form of the annotated type, e.g.
``{"__tf__": "datetime", "v": ...}`` for ``datetime`` or a tagged tuple for ``list[int]``: that
is what a producer sends when it only has the task name (``App.send_task`` in a process that
does not import the task). docs/protocol.md is the full wire specification.

Any other annotation (in particular an arbitrary class) raises :class:`PayloadError` from
:func:`build_schema`, naming the task and parameter.

Union rules: encoding tries the members in declaration order, first those the value is an
instance of (so ``float | int`` keeps ``3`` an ``int``), then all members; the first that
accepts the value wins. Decoding likewise prefers members whose wire form has the JSON type
of the value, then tries all; the first that decodes without error wins. Members that share a
wire form (``str | datetime``, two dataclasses with compatible fields) are therefore decided
by order: put the more specific member first.
"""

from __future__ import annotations

# Re-exported: the error every payload failure raises was always importable from here.
from taskflow.errors import PayloadError as PayloadError

from .schema import PayloadSchema, build_schema
from .tagged import decode_any, encode_any

__all__ = ["PayloadSchema", "build_schema", "decode_any", "encode_any"]
