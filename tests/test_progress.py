"""pipeline.Progress: the bar ends at its total with skips counted; the callback sees each image."""

from spectral_jax import pipeline


def test_skips_advance_the_bar_and_the_callback_but_not_the_rate(capsys):
  calls = []
  progress = pipeline.Progress(
    4, 'localize', callback=lambda done, total: calls.append((done, total)), bar=True
  )
  progress.update()
  progress.skip()
  progress.update(2)
  assert progress.bar.n == 4 == progress.bar.total
  assert (progress.done, progress.skipped) == (3, 1)
  assert calls == [(1, 4), (2, 4), (4, 4)]
  summary = progress.summary()
  assert summary.startswith('localize: 3 images in ')  # images done, not skipped ones
  bar = capsys.readouterr().err
  assert '4/4' in bar and 'skipped=1' in bar
