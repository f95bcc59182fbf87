"""A progress bar with images/s and an end-of-run summary line."""

from __future__ import annotations

import time

import tqdm


class Progress:
  """A progress bar with images/s; ``summary()`` for the end-of-run log line."""

  def __init__(self, total: int, desc: str):
    self.start = time.perf_counter()
    self.bar = tqdm.tqdm(total=total, desc=desc, unit='img', mininterval=2.0)

  def update(self, n: int = 1) -> None:
    self.bar.update(n)

  @property
  def rate(self) -> float:
    return self.bar.n / max(time.perf_counter() - self.start, 1e-9)

  def summary(self) -> str:
    self.bar.close()
    return (
      f'{self.bar.desc}: {self.bar.n} images in {time.perf_counter() - self.start:.1f} s '
      f'({self.rate:.2f} images/s)'
    )
