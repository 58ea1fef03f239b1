"""Host batches made in a background thread (`nfnets.data.host_prefetch`) and
the runner's training stream that uses it (`nfnets.train.loop.train_batches`).

The timing tests use sleeps, which cost no CPU, so they hold on a loaded
machine: a producer and a consumer that each sleep 0.05 s per item take the
sum of their times when run one after the other and about the larger one
when overlapped.
"""
import threading
import time

import numpy as np
import pytest

from nfnets import data
from nfnets.data import host_prefetch
from nfnets.train import config as config_lib
from nfnets.train import loop
from nfnets.train import state as state_lib

_SLEEP_S = 0.05
_ITEMS = 20


def _slow(items, seconds=_SLEEP_S, log=None):
  for item in items:
    time.sleep(seconds)
    if log is not None:
      log.append(threading.current_thread())
    yield item


def _consume(iterator, seconds=_SLEEP_S):
  out = []
  for item in iterator:
    time.sleep(seconds)  # The "device step".
    out.append(item)
  return out


def _threads_named(name):
  return [t for t in threading.enumerate() if t.name == name]


def test_items_come_in_order_and_all_of_them():
  assert list(host_prefetch.prefetch_on_host(range(100), size=3)) == list(
      range(100))
  assert not list(host_prefetch.prefetch_on_host([]))


def test_host_work_overlaps_the_consumer():
  serial = _ITEMS * 2 * _SLEEP_S
  start = time.perf_counter()
  out = _consume(host_prefetch.prefetch_on_host(_slow(range(_ITEMS))))
  elapsed = time.perf_counter() - start
  assert out == list(range(_ITEMS))
  # Overlapped: ~(ITEMS + 1) * SLEEP = 1.05 s; one after the other: 2.0 s.
  assert elapsed < 0.75 * serial, elapsed
  # The same consumer on the bare iterator takes the sum (the reference).
  start = time.perf_counter()
  _consume(_slow(range(_ITEMS)))
  assert time.perf_counter() - start >= serial


def test_reads_at_most_size_plus_one_ahead():
  made = []

  def source():
    for i in range(30):
      made.append(i)
      yield i

  size = 3
  for taken, _ in enumerate(host_prefetch.prefetch_on_host(source(), size),
                            start=1):
    time.sleep(0.01)  # Gives the producer time to fill the queue.
    assert len(made) <= taken + size + 1


def test_the_sources_error_reaches_the_consumer_after_its_items():
  def source():
    yield 0
    yield 1
    raise ValueError('bad record')

  got = []
  with pytest.raises(ValueError, match='bad record'):
    for item in host_prefetch.prefetch_on_host(source()):
      got.append(item)
  assert got == [0, 1]


def test_no_thread_until_iterated_and_none_left_after_close():
  name = 'test-host-prefetch'

  def endless():
    i = 0
    while True:
      yield i
      i += 1

  stream = host_prefetch.prefetch_on_host(endless(), name=name)
  assert not _threads_named(name)
  assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
  assert len(_threads_named(name)) == 1
  stream.close()
  assert not _threads_named(name)


def test_size_must_be_positive():
  with pytest.raises(ValueError, match='size'):
    host_prefetch.prefetch_on_host(range(3), size=0)


def test_runner_stream_makes_host_batches_off_the_loop_thread(monkeypatch):
  config = config_lib.base_config()
  config.data = data.default_config('digits')
  config.data.image_size = 16
  config.training.batch_size = 4
  sharding = state_lib.batch_sharded(state_lib.make_mesh())
  # The stream without the thread, from step 3 on: the reference.
  reference = list(data.prefetch_to_devices(_take(data.build_train(
      config.data, batch_size=4, seed=config.training.seed, start_step=3),
                                                  _ITEMS), sharding))
  made_in = []
  real_build = data.build_train
  monkeypatch.setattr(
      data, 'build_train', lambda *args, **kwargs: _slow(
          _take(real_build(*args, **kwargs), _ITEMS), log=made_in))
  start = time.perf_counter()
  batches = _consume(loop.train_batches(config, 3, sharding))
  elapsed = time.perf_counter() - start
  assert len(made_in) == _ITEMS
  assert threading.main_thread() not in made_in
  assert len(batches) == len(reference) == _ITEMS
  for got, want in zip(batches, reference):
    assert got.keys() == want.keys()
    for key in got:
      np.testing.assert_array_equal(np.asarray(got[key]),
                                    np.asarray(want[key]))
    assert got['images'].sharding == sharding
  # Host work and the "step" overlap: well under their sum (2.0 s).
  assert elapsed < 0.75 * _ITEMS * 2 * _SLEEP_S, elapsed


def _take(iterator, n):
  for _, item in zip(range(n), iterator):
    yield item
