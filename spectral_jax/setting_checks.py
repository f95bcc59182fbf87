"""The building blocks of every settings dataclass: a field with its one line of help, and the
checks that raise ``SettingError`` naming the setting's key."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from spectral_jax.errors import SettingError


def _field(default: Any, help_text: str) -> Any:
  return dataclasses.field(default=default, metadata={'help': help_text})


def _check(ok: bool, key: str, value: Any, reason: str) -> None:
  if not ok:
    raise SettingError(key, value, reason)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
