"""Task payload schemas: binding checks and argument/result conversion."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskflow.errors import PayloadError

from .annotations import _function_hints
from .builder import _Builder
from .core import _Codec, _Mismatch, _Unsupported
from .tagged import _ANY

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class PayloadSchema:
    """A task's compiled payload schema; build it with :func:`build_schema`.

    It checks that calls bind to the task's signature and converts arguments and results
    to and from their JSON-safe wire form. Errors are :class:`PayloadError` naming
    ``task_name``, the parameter (with a path into nested values) and the expected type.
    """

    def __init__(
        self,
        task_name: str,
        params: Sequence[inspect.Parameter],
        codecs: Mapping[str, _Codec],
        result: _Codec,
    ) -> None:
        self.task_name = task_name
        positional = [p for p in params if p.kind in _POSITIONAL]
        self._pos_names = tuple(p.name for p in positional)
        self._pos_codecs = tuple(codecs[p.name] for p in positional)
        self._n_posonly = sum(1 for p in positional if p.kind is p.POSITIONAL_ONLY)
        # Defaulted positional parameters always follow the required ones.
        self._n_required = sum(1 for p in positional if p.default is p.empty)
        self._kw_codecs = {p.name: codecs[p.name] for p in params if p.kind in _KEYWORD}
        self._kw_index = {
            p.name: i for i, p in enumerate(positional) if p.kind is p.POSITIONAL_OR_KEYWORD
        }
        self._kwonly_required = tuple(
            p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty
        )
        var_pos = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
        var_kw = next((p for p in params if p.kind is p.VAR_KEYWORD), None)
        self._var_pos_name = var_pos.name if var_pos else ""
        self._var_pos = codecs[var_pos.name] if var_pos else _ANY
        self._max_pos = sys.maxsize if var_pos else len(positional)
        self._var_kw = codecs[var_kw.name] if var_kw else None
        self._result = result

    def __repr__(self) -> str:
        return f"<PayloadSchema {self.task_name}>"

    # ----------------------------------------------------------------- binding

    def bind_check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise :class:`PayloadError` unless ``args``/``kwargs`` bind to the signature."""
        self._bind(len(args), kwargs)

    def check_partial(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`PayloadError` for what no positional arguments put in front of
        ``args`` can mend (a chain step gets its parent's result first): too many
        positional arguments, a keyword it does not take, or one ``args`` fills already."""
        count = len(args)
        if count > self._max_pos:
            self._bind(count, kwargs)
        if kwargs:
            self._check_keywords(count, kwargs)

    def _bind(self, count: int, kwargs: Mapping[str, Any]) -> None:
        if count > self._max_pos:
            given = "was" if count == 1 else "were"
            raise self._call_error(
                f"takes {_plural(self._max_pos, 'positional argument')} but {count} {given} given"
            )
        if kwargs:
            self._check_keywords(count, kwargs)
        if count < self._n_required or self._kwonly_required:
            self._check_missing(count, kwargs)

    def _check_missing(self, count: int, kwargs: Mapping[str, Any]) -> None:
        missing = [
            name
            for index, name in enumerate(self._pos_names[count : self._n_required], count)
            if index < self._n_posonly or name not in kwargs
        ]
        missing += [name for name in self._kwonly_required if name not in kwargs]
        if missing:
            word = "argument" if len(missing) == 1 else "arguments"
            raise self._call_error(f"missing required {word} {', '.join(map(repr, missing))}")

    def _check_keywords(self, count: int, kwargs: Mapping[str, Any]) -> None:
        for name in kwargs:
            index = self._kw_index.get(name)
            if index is not None:
                if index < count:
                    raise self._call_error(f"got multiple values for argument {name!r}")
            elif name not in self._kw_codecs and self._var_kw is None:
                if name in self._pos_names[: self._n_posonly]:
                    raise self._call_error(f"positional-only argument {name!r} passed as keyword")
                raise self._call_error(f"got an unexpected keyword argument {name!r}")

    def _call_error(self, message: str) -> PayloadError:
        return PayloadError(f"{self.task_name}: {message}")

    # ----------------------------------------------------------------- conversion

    def encode_args(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """Check the call binds, then validate and encode every argument.

        Positional arguments stay positional and keywords stay keywords, so decoding
        reproduces the same call. Defaults are not filled in.
        """
        self.bind_check(args, kwargs)
        return self._positional(args, decode=False), self._keywords(kwargs, decode=False)

    def decode_args(
        self, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Turn wire arguments back into the annotated types, ready for the call."""
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise self._call_error(
                f"malformed payload: args {type(args).__name__}, kwargs {type(kwargs).__name__}"
            )
        self._bind(len(args), kwargs)
        return tuple(self._positional(args, decode=True)), self._keywords(kwargs, decode=True)

    def encode_result(self, value: Any) -> Any:
        """Validate and encode a return value against the return annotation."""
        return self._convert(self._result, value, "return", decode=False)

    def decode_result(self, value: Any) -> Any:
        """Decode a wire return value back to the return annotation's type."""
        return self._convert(self._result, value, "return", decode=True)

    def _positional(self, args: Sequence[Any], *, decode: bool) -> list[Any]:
        codecs = self._pos_codecs
        limit = len(codecs)
        out: list[Any] = []
        for index, value in enumerate(args):
            codec = codecs[index] if index < limit else self._var_pos
            # Inline fast path: exact JSON scalars for scalar/Any parameters pass as they are.
            if type(value) in (codec.dec_fast if decode else codec.enc_fast):
                out.append(value)
            else:
                out.append(self._convert(codec, value, self._pos_label(index), decode))
        return out

    def _pos_label(self, index: int) -> str:
        if index < len(self._pos_names):
            return self._pos_names[index]
        return f"{self._var_pos_name}[{index - len(self._pos_names)}]"

    def _keywords(self, kwargs: Mapping[str, Any], *, decode: bool) -> dict[str, Any]:
        codecs = self._kw_codecs
        out: dict[str, Any] = {}
        for name, value in kwargs.items():
            # bind_check guarantees a **kwargs codec exists for names not in codecs.
            codec = codecs.get(name) or self._var_kw or _ANY
            if type(value) in (codec.dec_fast if decode else codec.enc_fast):
                out[name] = value
            else:
                out[name] = self._convert(codec, value, name, decode)
        return out

    def _convert(self, codec: _Codec, value: Any, label: str, decode: bool) -> Any:
        try:
            if decode:
                return value if type(value) in codec.dec_fast else codec.decode(value)
            return value if type(value) in codec.enc_fast else codec.encode(value)
        except _Mismatch as exc:
            raise PayloadError(f"{self.task_name}({label}{exc.where()}): {exc.message}") from None
        except RecursionError:
            # Python's stack ends before any sane payload does; the envelope's own limit
            # (64 levels) is checked where envelopes are built and decoded.
            raise PayloadError(f"{self.task_name}({label}): nested too deeply") from None


def _payload_params(
    signature: inspect.Signature, task_name: str, skip_first: bool
) -> list[inspect.Parameter]:
    params = list(signature.parameters.values())
    if not skip_first:
        return params
    if not params or params[0].kind not in _POSITIONAL:
        raise PayloadError(
            f"{task_name}: a bound task needs a first positional parameter for the context"
        )
    return params[1:]


def _build_codec(builder: _Builder, task_name: str, label: str, hint: Any) -> _Codec:
    try:
        return builder.build(hint)
    except _Unsupported as exc:
        raise PayloadError(
            f"{task_name}({label}): unsupported annotation {exc.what}: {exc.reason}"
        ) from None


def build_schema(
    fn: Callable[..., Any], task_name: str, *, skip_first: bool = False
) -> PayloadSchema:
    """Compile ``fn``'s annotations into a :class:`PayloadSchema`, once per task.

    ``skip_first`` drops the first parameter (the task context of ``bind=True`` tasks),
    which is then not part of the payload and its annotation is ignored. Annotations
    that cannot be resolved (forward references) are treated as ``Any``; annotations
    taskflow cannot encode raise :class:`PayloadError` naming the task and parameter.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{task_name}: cannot read the task signature: {exc}") from None
    params = _payload_params(signature, task_name, skip_first)
    hints = _function_hints(fn, signature)
    builder = _Builder()
    codecs = {
        p.name: _build_codec(builder, task_name, p.name, hints.get(p.name, Any)) for p in params
    }
    result = _build_codec(builder, task_name, "return", hints.get("return", Any))
    return PayloadSchema(task_name, params, codecs, result)
