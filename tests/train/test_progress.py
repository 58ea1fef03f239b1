"""Speed and ETA over training steps only; metrics, start-up line, profiling."""
import io
import logging

from absl import logging as absl_logging
import pytest

from nfnets.train import loop
from nfnets.train import metrics as metrics_lib
from nfnets.train import progress as progress_lib
from tests.train.test_experiment import tiny_config


class FakeClock:

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  fake = FakeClock()
  monkeypatch.setattr(progress_lib.time, 'monotonic', fake)
  return fake


def test_speed_leaves_out_compilation_evaluation_and_saves(clock):
  progress = progress_lib.Progress(total_steps=100, batch_size=64,
                                   enabled=True, bar=False)
  assert progress.lap(1) is None  # The clock has not started.
  clock.now += 30.0  # The first step compiles: not counted.
  progress.start(1)
  clock.now += 2.0  # Steps 2..5 train in 2 s ...
  with progress.paused():
    clock.now += 50.0  # ... an evaluation takes 50 s ...
  clock.now += 2.0  # ... and steps 6..9 another 2 s.
  with progress.paused():
    clock.now += 7.0  # A checkpoint save.
  speed = progress.lap(9)
  assert speed.step_time == pytest.approx(4.0 / 8)
  assert speed.images_per_sec == pytest.approx(64 / 0.5)
  assert speed.eta_seconds == pytest.approx(91 * 0.5)
  # The next lap starts afresh.
  clock.now += 1.0
  assert progress.lap(11).step_time == pytest.approx(0.5)


def test_eta_format():
  assert progress_lib.format_eta(3725.9) == '1:02:05'
  assert progress_lib.format_eta(float('inf')) == '?'


def test_bar_on_a_terminal_shows_loss_speed_and_eta(clock):
  stream = io.StringIO()
  progress = progress_lib.Progress(total_steps=10, batch_size=8,
                                   enabled=True, stream=stream, bar=True)
  progress.start(1)
  clock.now += 4.0
  progress.show(5, {'loss': 1.25, 'top1': 0.5}, progress.lap(5))
  progress.close()
  text = stream.getvalue()
  assert '5/10' in text and 'loss 1.2500' in text
  assert '8 img/s' in text and 'ETA 0:00:05' in text


class _Lines(logging.Handler):

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.lines = []

  def emit(self, record: logging.LogRecord) -> None:
    self.lines.append(record.getMessage())


@pytest.mark.slow
def test_run_logs_startup_metrics_and_writes_a_profile(tmp_path):
  config = tiny_config(num_steps=4)
  config.training.log_every = 1
  config.training.profile_steps = 2
  # On absl's own logger: command-line tests run in the same process may
  # have changed the verbosity and the root logger's handlers.
  lines = _Lines()
  logger = absl_logging.get_absl_logger()
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  logger.addHandler(lines)
  try:
    loop.train_and_evaluate(config, tmp_path)
  finally:
    logger.removeHandler(lines)
    absl_logging.set_verbosity(verbosity)
  text = '\n'.join(lines.lines)
  assert 'Process 0 of 1 on cpu' in text and 'mesh {' in text
  assert 'batch 8 (' in text and 'parameters' in text
  assert 'step 4/4' in text
  records = [r for r in metrics_lib.read_metrics(tmp_path)
             if 'train/loss' in r]
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  # Step 1 compiles: its speed is not measured; later steps have one.
  assert 'train/images_per_sec' not in records[0]
  for record in records[1:]:
    assert record['train/images_per_sec'] > 0
    assert record['train/step_time'] == pytest.approx(
        8 / record['train/images_per_sec'])
  for record in records:
    assert record['train/param_norm'] > 0 and record['train/grad_norm'] > 0
    assert 0 <= record['train/agc_clip_fraction'] <= 1
    assert record['train/learning_rate'] >= 0
  traces = list((tmp_path / 'profile').rglob('*.xplane.pb'))
  assert len(traces) == 1
  assert 'Profiled steps 2-3' in text
