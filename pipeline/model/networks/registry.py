"""`train.arch` name -> builder(TrainConfig) -> keras.Model; each architecture module registers itself."""

from __future__ import annotations

from typing import Callable

BUILDERS: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        BUILDERS[name] = fn
        return fn

    return deco
