"""A progress bar with images/s and an end-of-run summary line."""

from __future__ import annotations

import time
from typing import Callable, Optional

import tqdm


def count(n: int, noun: str = 'image') -> str:
  """'1 image', '3 images'."""
  return f'{n} {noun}' + 's' * (n != 1)


class Progress:
  """A progress bar with images/s; skipped images advance it too (it ends at its total, the
  skips shown beside it); ``summary()`` for the end-of-run line. ``callback(done, total)``, if
  given, is called after each image, finished or skipped."""

  def __init__(
    self,
    total: int,
    desc: str,
    callback: Optional[Callable[[int, int], None]] = None,
    bar: bool = True,
  ):
    self.start = time.perf_counter()
    self.total, self.done, self.skipped = total, 0, 0
    self.callback = callback
    self.bar = tqdm.tqdm(total=total, desc=desc, unit='img', mininterval=2.0, disable=not bar)
    self.desc = desc

  def update(self, n: int = 1) -> None:
    self.done += n
    self.bar.update(n)
    self._tell()

  def skip(self, n: int = 1) -> None:
    self.skipped += n
    self.bar.set_postfix(skipped=self.skipped, refresh=False)
    self.bar.update(n)
    self._tell()

  def _tell(self) -> None:
    if self.callback is not None:
      self.callback(self.done + self.skipped, self.total)

  @property
  def rate(self) -> float:
    return self.done / max(time.perf_counter() - self.start, 1e-9)

  def close(self) -> None:
    self.bar.close()

  def summary(self) -> str:
    self.close()
    return (
      f'{self.desc}: {count(self.done)} in {time.perf_counter() - self.start:.1f} s '
      f'({self.rate:.2f} images/s)'
    )
