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


def test_one_image_is_singular_and_close_ends_the_bar():
  progress = pipeline.Progress(1, 'segment', bar=False)
  progress.update()
  assert progress.summary().startswith('segment: 1 image in ')
  assert (pipeline.count(0), pipeline.count(2, 'object')) == ('0 images', '2 objects')
  progress = pipeline.Progress(2, 'segment', bar=True)
  progress.close()
  assert progress.bar.disable  # tqdm marks a closed bar disabled
