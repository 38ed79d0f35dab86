"""The loader: a checkpointable Grain iterator over the batches a ``LoaderConfig`` describes.

Two concepts:

* **``build(path, config)``** assembles the pipeline from the small parts, each with its own
  contract: the selection (:func:`~rldskit.formats.step_index.select_episodes` over a
  :class:`~rldskit.formats.step_index.StepIndex`), the order
  (:class:`~rldskit.loaders.order.EpochOrder`), the normaliser
  (:class:`~rldskit.loaders.normalize.Normalizer`) and the batch transform
  (:class:`~rldskit.loaders.windowing.WindowMaker` over a
  :class:`~rldskit.loaders.sources.StepSource`)::

      MapDataset.range(batches per epoch) -> repeat(num_epochs) -> map_with_index(EpochOrder.element)
        -> map(WindowMaker) (random_map for uniform goals) -> to_iter_dataset(ReadOptions) -> mp_prefetch

  The order is vectorised numpy (one permutation per epoch), not per-element shuffle and batch
  datasets, which cost ~1 ms per batch of 32 in Grain's per-element machinery. Threads, worker
  processes, prefetching, buffer recycling and the frame cache are arguments of ``build``, not of
  the config: they change how fast batches come, never what they hold.
* **``Loader``**: a Grain ``DatasetIterator`` with ``len`` (batches per epoch) and exact resumption.
  Its state is the number of batches yielded plus :meth:`~rldskit.loaders.config.LoaderConfig.fingerprint`;
  restoring rebuilds the pipeline from that batch on (``ds[n:]``), so the next batch and every one
  after it equal the uninterrupted run's, whatever the number of worker processes before or after.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np

from rldskit.formats.step_index import StepIndex, parse_split, select_episodes
from rldskit.loaders.config import LoaderConfig
from rldskit.loaders.normalize import Normalizer
from rldskit.loaders.order import EpochOrder, shuffle_seed
from rldskit.loaders.sources import StepSource
from rldskit.loaders.windowing import WindowMaker

__all__ = ["Loader", "build", "default_read_options"]

_MAX_THREADS = 4  # measured on 2 cores only; more threads than cores cost ~3%


def default_read_options(worker_count: int, reads_records: bool) -> grain.ReadOptions:
    """Threads and buffer per process, from measurements on 2 cores (``bench/load.py``: windows
    ``H=2, K=8``, batch 64, two 480x640 JPEG cameras, 20k steps, steady state, medians of 24
    intervals; simplejpeg decoding into recycled batch buffers):

    ===========================================  ======  ======  ======  ===========  ===========
    windows/s                                    1 thr   2 thr   4 thr   2 workers    tf.data
    ===========================================  ======  ======  ======  ===========  ===========
    recycled buffers (the default)                 502     926     925     619          831
    ``reuse_buffers=False``                          -     846       -       -            -
    ===========================================  ======  ======  ======  ===========  ===========

    The decode floor (simplejpeg, two threads, no pipeline) is 1030 windows/s, so 2 threads run at
    90% of it on 1.93 cores. Grain's default (16 threads, a 500-element buffer) measured no faster
    than 2 threads with Pillow, and since our elements are whole batches (236 MB each here) its
    buffer would hold hundreds of them. simplejpeg and Pillow release the GIL while decoding, so 2
    threads use both cores; worker processes lose to threads because every batch crosses to the
    main process through shared memory. The buffer size mattered little (2-8 batches within 2%),
    so it is ``threads + 1``. Without record reads everything is numpy indexing in RAM: no threads.
    Each worker process (``worker_count > 0``) runs one thread."""
    if not reads_records:
        return grain.ReadOptions(num_threads=0, prefetch_buffer_size=1)
    threads = 1 if worker_count > 0 else max(1, min(_MAX_THREADS, os.cpu_count() or 1))
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads + 1)


def _absl_flags_ready() -> None:
    """Grain 0.2.18 imports JAX's profiler when JAX is installed and then reads an absl flag when
    it starts worker processes, which raises ``UnparsedFlagAccessError`` outside ``absl.app.run``
    (plain scripts, pytest). Marking the flags parsed keeps every default; ``app.run`` still
    parses the command line later as usual."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class Loader(grain.DatasetIterator):
    """An iterable of batches with ``len`` and exact resumption (module docstring, *State*).

    It is a Grain ``DatasetIterator``, so Grain's Orbax checkpoint handler
    (``grain.checkpoint.CheckpointSave(loader)`` / ``CheckpointRestore(loader)`` in an
    ``orbax.checkpoint.CheckpointManager``, one ``process_<i>-of-<n>.json`` per host) and Orbax's
    ``StatefulCheckpointable`` API (``save``/``load``) checkpoint it with the model.

    ``iter(loader)`` continues the pass in progress (so a ``break`` and a new ``for`` go on where
    they left off); once a pass has ended, ``iter`` starts a new one from the first batch.
    ``get_state()`` is a small JSON-able dict; ``set_state(state)`` makes the next batch the one
    that followed when the state was taken. ``dataset`` is the Grain ``IterDataset``,
    ``map_dataset`` the ``MapDataset`` before it (random access to batch ``i``). Close it (or use it
    as a context manager) to stop worker processes promptly. Worker processes (``worker_count > 0``)
    are started with ``spawn`` (Grain's choice): a script needs the ``if __name__ == "__main__":``
    guard, and a worker takes a second or two to start (imports). ``config`` is the
    :class:`~rldskit.loaders.config.LoaderConfig` it was built from; ``index``, ``maker`` and
    ``normalizer`` are its parts."""

    def __init__(self, map_dataset: grain.MapDataset, *, epoch_length: int, read_options: grain.ReadOptions,
                 worker_count: int, fingerprint: str, index: StepIndex, maker: WindowMaker,
                 normalizer: Normalizer | None, num_samples: int, config: LoaderConfig):
        self.map_dataset, self.read_options, self.worker_count = map_dataset, read_options, worker_count
        self.index, self.maker, self.normalizer, self.config = index, maker, normalizer, config
        super().__init__()
        self.num_samples = num_samples  # selected steps per epoch on this host
        self._epoch_length, self._fingerprint = epoch_length, fingerprint
        self._it: Iterator | None = None
        self._next = 0
        self._exhausted = False

    def _iter_dataset(self, start: int = 0) -> grain.IterDataset:
        ds = self.map_dataset if start == 0 else self.map_dataset[start:]
        ids = ds.to_iter_dataset(self.read_options)
        if self.worker_count > 0:
            _absl_flags_ready()
            ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
        return ids

    @property
    def dataset(self) -> grain.IterDataset:
        """The Grain pipeline from the first batch (``to_iter_dataset`` and ``mp_prefetch`` applied)."""
        return self._iter_dataset(0)

    def __len__(self) -> int:
        """Batches (or samples, unbatched) per epoch on this host."""
        return self._epoch_length

    @property
    def num_batches(self) -> int | None:
        """Batches in all epochs, or ``None`` when repeating forever."""
        n = len(self.map_dataset)
        return None if self.config.num_epochs is None else n

    def __iter__(self) -> Loader:
        if self._exhausted:
            self._close_iterator()
            self._next, self._exhausted = 0, False
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._exhausted:
            raise StopIteration
        if self._it is None:
            self._it = iter(self._iter_dataset(self._next))
        try:
            batch = next(self._it)
        except StopIteration:
            self._exhausted = True
            self._close_iterator()
            raise
        except BaseException:
            self._close_iterator()  # a later next() retries the same batch (and raises the same error)
            raise
        self._next += 1
        return batch

    def start_prefetch(self) -> None:
        """Start reading the next batches in the background now (Grain's checkpoint handler calls
        it after a restore, so the first batch overlaps restoring the model). Idempotent."""
        if self._exhausted:
            return
        if self._it is None:
            self._it = iter(self._iter_dataset(self._next))
        if hasattr(self._it, "start_prefetch"):
            self._it.start_prefetch()

    def _get_next_index(self) -> int:
        return self._next

    def _set_next_index(self, index: int) -> None:
        self.set_state({"rldskit_loader": 1, "next_batch": int(index), "fingerprint": self._fingerprint})

    def get_state(self) -> dict[str, Any]:
        """``{"rldskit_loader": 1, "next_batch": n, "fingerprint": ...}`` (JSON-able)."""
        return {"rldskit_loader": 1, "next_batch": self._next, "fingerprint": self._fingerprint}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("rldskit_loader") != 1 or "next_batch" not in state:
            raise ValueError(f"not an rldskit Loader state: {state!r:.200}")
        if state.get("fingerprint") != self._fingerprint:
            raise ValueError("this state belongs to a loader with another order (dataset selection, seed, shuffle, "
                             "batch size, epochs, process index/count or drop_remainder differ); it cannot resume here")
        n = int(state["next_batch"])
        if not 0 <= n <= len(self.map_dataset):
            raise ValueError(f"state next_batch={n} is outside 0..{len(self.map_dataset)}")
        self._close_iterator()
        self._next, self._exhausted = n, False

    def _close_iterator(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            try:
                it.close()
            except Exception:  # closing is best effort; the worker processes are daemons
                pass

    def close(self) -> None:
        self._close_iterator()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        c = self.config
        where = f"{self.index.path.parent.name}/{self.index.path.name}/{c.split}"
        return (f"Loader({c.kind}, {where}, {self.num_samples} samples x "
                f"{c.num_epochs or 'inf'} epochs, batch {c.batch_size}, {len(self)} per epoch, "
                f"host {c.process_index}/{c.process_count}, workers {self.worker_count}, "
                f"threads {self.read_options.num_threads})")


def build(path: str | os.PathLike, config: LoaderConfig, *, stats: Mapping | str | os.PathLike | None = None,
          worker_count: int = 0, num_threads: int | None = None, prefetch_buffer_size: int | None = None,
          reuse_buffers: bool = True, cache_frames: bool | None = None) -> Loader:
    """The :class:`Loader` of the dataset at ``path`` that ``config`` describes (module docstring).
    ``path`` may be a ``gs://`` or ``s3://`` URL: the loader reads a verified local copy
    (:func:`rldskit.dataset_cache.local_copy`, filled on first use and reused).

    ``stats``: normalisation statistics when ``config.normalize`` is set (a mapping or a
    ``stats.json`` path; default the dataset's ``stats.json``, else its train split's statistics:
    :func:`~rldskit.loaders.normalize.resolve_stats`). How batches are computed, never what they
    hold: ``worker_count`` decoding processes (0: in this process), ``num_threads`` and
    ``prefetch_buffer_size`` (default :func:`default_read_options`), ``reuse_buffers`` and
    ``cache_frames`` (see :class:`~rldskit.loaders.windowing.WindowMaker`)."""
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    from rldskit.dataset_cache import local_copy

    local = local_copy(path)  # gs:// and s3://: a verified local copy, filled once (ArrayRecord reads local files)
    index = StepIndex.load(local, parse_split(config.split)[0])
    named = index.path if local == Path(os.fspath(path)) else path  # messages name a bucket URL, not the copy
    selected = index.steps_of(select_episodes(index, config.split, config.episode_filter))
    if len(selected) == 0:
        raise ValueError(f"{named}: split {config.split!r}{' and episode_filter' if config.episode_filter else ''} "
                         "select no steps")
    normalizer = None
    if config.normalize is not None:
        keys = config.sample_keys(index.spec).normalized
        normalizer = Normalizer.for_index(index, config.normalize_mode, keys, stats)
    maker = WindowMaker.from_config(StepSource(index), config, normalizer=normalizer, reuse_buffers=reuse_buffers,
                                    cache_frames=cache_frames)

    order = EpochOrder.from_config(selected, config)
    num_samples, epoch_length = order.num_samples, order.per_epoch
    if epoch_length == 0:
        raise ValueError(f"{num_samples} samples per epoch on this host make no batch of {config.batch_size} "
                         "with drop_remainder=True")
    ds = grain.MapDataset.range(epoch_length)
    ds = ds.repeat(config.num_epochs).map_with_index(order.element)
    if maker.goal == "uniform":  # an rng per batch from (seed, batch position): resuming redraws the same goals
        ds = ds.random_map(maker.with_rng, seed=shuffle_seed(config.seed + 1))
    else:
        ds = ds.map(maker)
    default = default_read_options(worker_count, maker.reads_records)
    if num_threads is None and prefetch_buffer_size is None:
        read_options = default
    else:
        read_options = grain.ReadOptions(
            num_threads=default.num_threads if num_threads is None else num_threads,
            prefetch_buffer_size=default.prefetch_buffer_size if prefetch_buffer_size is None else prefetch_buffer_size)
    # batches being built + Grain's buffer + the caller's current and previous one
    maker.pool_capacity = read_options.num_threads + read_options.prefetch_buffer_size + 3
    return Loader(ds, epoch_length=epoch_length, read_options=read_options, worker_count=worker_count,
                  fingerprint=config.fingerprint(selected), index=index, maker=maker, normalizer=normalizer,
                  num_samples=num_samples, config=config)
