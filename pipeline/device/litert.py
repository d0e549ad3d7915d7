"""The one way the project opens a .tflite model: a LiteRT interpreter with tensors allocated.

`tflite_runner.py` keeps its own loader on purpose: it is copied alone to the device.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.errors import DataError


def load_interpreter(
    *,
    path: str | os.PathLike | None = None,
    content: bytes | None = None,
    num_threads: int | None = None,
    delegates: bool = True,
    name: str | None = None,
    error: type[Exception] = DataError,
):
    """A LiteRT Interpreter over a file (`path`) or bytes (`content`), tensors allocated.

    delegates=False runs the plain builtin kernels (the graph as converted, before XNNPACK
    takes parts of it). A model that cannot load raises `error` with one line naming `name`
    (default: the path): DataError for a user's file, ExportError for a fresh conversion.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    name = name or str(path)
    if content is None:
        path = Path(path)
        if not path.is_file():
            raise error(f"{path}: model file not found")
        if path.stat().st_size == 0:
            raise error(f"{path}: model file is empty")
    source = {"model_content": content} if content is not None else {"model_path": str(path)}
    resolver = (
        OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    try:
        interp = Interpreter(
            **source, num_threads=num_threads, experimental_op_resolver_type=resolver
        )
        interp.allocate_tensors()
    except Exception as err:  # LiteRT raises ValueError/RuntimeError with multi-line text
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(f"{name}: cannot load TFLite model ({first})") from None
    return interp
