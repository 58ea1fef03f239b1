"""Host batches made by a background thread while the device steps.

The training loop's thread dispatches a step, then waits on the device at
log, eval and checkpoint steps. If it also made the host batches (decoding,
augmenting, stacking NumPy arrays), that work would run between steps,
after each wait, with the device idle. `prefetch_on_host` moves it to one
background thread that keeps up to `size` finished batches in a bounded
queue, so host work overlaps the device step whenever the host is faster.

Order is kept (one producer, one FIFO queue), so a stream that is a function
of (seed, step) stays one, and resuming still rebuilds the stream from its
start step; the thread only reads ahead. Nothing starts at import or when
`prefetch_on_host` is called: the thread starts at the first `next()` and
stops when the iterator is exhausted, closed or garbage collected.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar('T')

# How often a producer blocked on a full queue checks for a stop request.
_POLL_S = 0.05
# How long closing waits for the producer to finish the item it is making.
_JOIN_S = 5.0


class _End:
  """The producer's last queue entry: the source ran out, or raised."""

  def __init__(self, error: BaseException | None = None):
    self.error = error


def prefetch_on_host(items: Iterable[T], size: int = 2,
                     name: str = 'nfnets-host-prefetch') -> Iterator[T]:
  """Yields `items` in order, made by a background thread up to `size` ahead.

  Args:
    items: an iterable (e.g. a data set's `build_train` iterator); it is
      iterated only in the background thread.
    size: finished items held in the queue (at most `size + 1` are made
      before the consumer takes one: the queue plus the one being put).
    name: the thread's name (shown by debuggers and profilers).

  Yields:
    The items of `items`, in order.

  Raises:
    Whatever iterating `items` raised, in the consumer, after the items
    made before it.
  """
  if size < 1:
    raise ValueError(f'size must be at least 1, got {size}.')
  return _generate(items, size, name)


def _generate(items: Iterable[T], size: int, name: str) -> Iterator[T]:
  # A generator, so that the thread starts at the first next() and the
  # `finally` below runs on exhaustion, close() and garbage collection.
  made: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(entry) -> bool:
    while not stop.is_set():
      try:
        made.put(entry, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    source = iter(items)
    try:
      for item in source:
        if not put(item):
          break
      else:
        put(_End())
    except BaseException as e:  # pylint: disable=broad-except
      put(_End(e))
    finally:
      if stop.is_set():
        close = getattr(source, 'close', None)
        if close is not None:
          close()

  thread = threading.Thread(target=produce, name=name, daemon=True)
  thread.start()
  try:
    while True:
      entry = made.get()
      if isinstance(entry, _End):
        if entry.error is not None:
          raise entry.error
        return
      yield entry
  finally:
    stop.set()
    thread.join(_JOIN_S)
