"""The TFDS baseline of ``bench/convert.py``: a ``tfds.core.GeneratorBasedBuilder`` written the
way the Open-X ``rlds_dataset_builder`` template writes one.

``_info`` declares ``spec.to_tfds_features()``; ``_split_generators`` returns one ``train``
split; ``_generate_examples`` reads each capture folder with
``read_episode(load_frames=True)`` and yields ``(episode_id, to_tfds_example(episode, spec))``,
so TFDS does the encoding and the writing (its shuffler for the plain generator, its
``BeamWriter`` for Beam). As in the template, the Beam variant returns
``beam.Create(paths) | beam.Map(parse_episode)`` (a ``PTransform``), which TFDS 4.9's
``SplitBuilder`` applies to its pipeline; the DirectRunner options come in through
``DownloadConfig(beam_options=...)``. Frames are given to TFDS as their encoded JPEG bytes,
which ``tfds.features.Image`` passes through without decoding (the template's users often
hand over decoded arrays, which TFDS would re-encode: that would only make TFDS slower).

Run as a child process (the parent times the whole process, TensorFlow import included)::

    python bench/_tfds_baseline.py {beam|generator} SOURCE_DIR DATA_DIR [--workers N]

prints one JSON line: ``{"seconds": <download_and_prepare time>, "num_examples": <what TFDS
says it wrote>, "dir": <dataset folder>}``. ``bench/`` must be on ``PYTHONPATH`` so Beam
workers (separate processes) can import :func:`parse_episode` from this module.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import tensorflow_datasets as tfds

from rldskit.formats.capture_dir import read_episode
from rldskit.formats.tfexample import to_tfds_example
from rldskit.spec import EpisodeSpec, load_spec


@functools.lru_cache(maxsize=None)
def _spec(schema_path: str) -> EpisodeSpec:
    return load_spec(schema_path)


def episode_paths(source_dir: str) -> list[str]:
    return sorted(str(p) for p in Path(source_dir).iterdir() if (p / "metadata.json").is_file())


def parse_episode(episode_path: str, schema_path: str):
    """One ``(key, example)`` pair, as the template's ``_parse_example`` returns."""
    spec = _spec(schema_path)
    episode = read_episode(episode_path, spec, load_frames=True)
    return episode.episode_id, to_tfds_example(episode, spec)


class RldskitBenchEpisodes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Synthetic capture episodes as an RLDS TFDS dataset (the bench's baseline). Not put in
    TFDS's registry: it is made directly, and this module may be loaded twice (see the end)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Benchmark baseline."}
    source_dir = ""  # set by main() before the builder is made
    use_beam = False

    @property
    def _schema(self) -> str:
        return str(Path(self.source_dir) / "schema.json")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description="rldskit convert benchmark baseline",
                                     features=_spec(self._schema).to_tfds_features())

    def _split_generators(self, dl_manager):
        gen = self._generate_examples_beam if self.use_beam else self._generate_examples
        return {"train": gen(self.source_dir)}

    def _generate_examples(self, path):
        # template: "for smallish datasets, use single-thread parsing"
        for p in episode_paths(path):
            yield parse_episode(p, self._schema)

    def _generate_examples_beam(self, path):
        # template: "for large datasets use beam to parallelize data parsing"
        beam = tfds.core.lazy_imports.apache_beam
        return beam.Create(episode_paths(path)) | beam.Map(parse_episode, self._schema)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["beam", "generator"])
    ap.add_argument("source_dir")
    ap.add_argument("data_dir")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t0 = time.perf_counter()
    RldskitBenchEpisodes.source_dir = str(Path(args.source_dir).resolve())
    RldskitBenchEpisodes.use_beam = args.mode == "beam"
    config = tfds.download.DownloadConfig()
    if args.mode == "beam":
        import apache_beam as beam

        config = tfds.download.DownloadConfig(beam_options=beam.options.pipeline_options.PipelineOptions(
            ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]))
    builder = RldskitBenchEpisodes(data_dir=args.data_dir, file_format="tfrecord")
    builder.download_and_prepare(download_config=config)
    print(json.dumps({"seconds": time.perf_counter() - t0,
                      "num_examples": builder.info.splits["train"].num_examples, "dir": builder.data_dir}))
    return 0


if __name__ == "__main__":
    # Beam pickles parse_episode by reference only when it lives in a module the workers can
    # import by name (not __main__), so run main() from the module imported as _tfds_baseline.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _tfds_baseline

    sys.exit(_tfds_baseline.main())
