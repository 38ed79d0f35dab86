"""Validation issues: one record per problem, each with a stable code.

An :class:`Issue` names the ``code`` (stable, documented in :data:`CODES`), its ``severity``
(``error`` fails validation; ``warning`` fails only under ``--strict``), the ``episode`` (its
path or id), the ``step`` (index, or ``None`` for episode-level problems), the ``field``
(flat feature path, or ``None``) and a ``message`` that says what was expected.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ERROR = "error"
WARNING = "warning"

#: code -> (default severity, what it means). Codes never change meaning once released.
CODES: dict[str, tuple[str, str]] = {
    # reading
    "PATH_NOT_FOUND": (ERROR, "a path given to validate does not exist"),
    "NOT_AN_EPISODE": (ERROR, "a file or folder is not an episode in any known layout"),
    "NO_EPISODES": (ERROR, "a folder holds no episodes"),
    "READ_ERROR": (ERROR, "a file could not be read (permissions, I/O error, bad compression)"),
    "METADATA_MISSING": (ERROR, "an episode folder has no metadata.json"),
    "METADATA_INVALID": (ERROR, "metadata is not a JSON object or a field has the wrong type"),
    "METADATA_FIELD_MISSING": (WARNING, "a standard episode-metadata field is absent (a default was used)"),
    "JSON_INVALID": (ERROR, "a step line is not valid JSON or not a JSON object"),
    "JSON_TRUNCATED": (ERROR, "the last step line is cut off (an unfinished write)"),
    "EPISODE_UNFINISHED": (ERROR, "the episode was never ended (logger killed); `rldskit recover` salvages it"),
    "STEPS_GAP": (ERROR, "step chunk files are missing or out of order"),
    "STEP_COUNT_MISMATCH": (ERROR, "the number of steps differs from the count recorded at end_episode"),
    "TERMINAL_UNKNOWN": (WARNING, "no flags and no end record: is_terminal cannot be known, taken as truncated"),
    # schema
    "SCHEMA_MISMATCH": (ERROR, "the episode was recorded for another schema or major version"),
    "SCHEMA_MINOR_MISMATCH": (WARNING, "the episode was recorded for another minor/patch version of the schema"),
    "FIELD_MISSING": (ERROR, "a required feature is absent from a step"),
    "FIELD_UNEXPECTED": (WARNING, "a step carries a feature the schema does not declare"),
    "FIELD_TYPE": (ERROR, "a value has the wrong JSON type (string for a number, list for a scalar, ...)"),
    "FIELD_SHAPE": (ERROR, "a value has the wrong shape"),
    "FIELD_DTYPE": (ERROR, "a value does not fit the declared dtype (fraction in an int, out of range)"),
    "TEXT_CHOICE": (ERROR, "a text value is not one of the declared choices"),
    "TEXT_TOO_LONG": (ERROR, "a text value is longer than max_length"),
    # values
    "NON_FINITE": (ERROR, "NaN or infinity in a numeric feature"),
    "OUT_OF_BOUNDS": (ERROR, "a value is outside its declared or gated bounds"),
    "PLACEHOLDER_MISMATCH": (WARNING, "an absent optional signal holds something other than its placeholder"),
    # RLDS flags
    "FLAG_IS_FIRST": (ERROR, "is_first must be True at step 0 and only there"),
    "FLAG_IS_LAST": (ERROR, "is_last must be True at the last step and only there"),
    "FLAG_IS_TERMINAL": (ERROR, "is_terminal may only be True where is_last is True"),
    "DISCOUNT_RANGE": (ERROR, "discount outside [0, 1]"),
    # time
    "TIMESTAMP_NON_MONOTONIC": (ERROR, "a stream's timestamps go backwards"),
    "TIMESTAMP_DUPLICATE": (ERROR, "a stream repeats a timestamp"),
    "TIMESTAMP_SKEW": (ERROR, "two streams' timestamps in one step differ by more than the gate"),
    "RATE_OUT_OF_BAND": (ERROR, "the episode's median control rate is outside the gate's band"),
    # images
    "IMAGE_MISSING": (ERROR, "a frame file referenced by a step is absent"),
    "IMAGE_PATH": (ERROR, "a frame path escapes the episode folder or is not a string"),
    "IMAGE_UNDECODABLE": (ERROR, "a frame cannot be decoded"),
    "IMAGE_SIZE": (ERROR, "a frame's size or channel count differs from the schema"),
    "IMAGE_ENCODING": (WARNING, "a frame is PNG where JPEG is declared, or the reverse"),
    # dataset level
    "TOO_FEW_STEPS": (ERROR, "an episode has fewer steps than min_steps"),
    "TOO_FEW_EPISODES": (ERROR, "fewer episodes than min_episodes"),
    "DUPLICATE_EPISODE_ID": (ERROR, "two episodes share an episode_id"),
    # converted datasets (TFDS directories; the issue's episode is the shard file)
    "SHARD_MISSING": (ERROR, "a shard file named by dataset_info.json is absent"),
    "SHARD_CORRUPT": (ERROR, "a shard fails its checksums or is truncated (the message gives the byte offset or record)"),
    "SHARD_COUNT_MISMATCH": (ERROR, "an intact shard holds another number of records than dataset_info.json says"),
    "RECORD_UNDECODABLE": (ERROR, "a record is not a tf.train.Example episode of the dataset's spec"),
    # importing Donkeycar tubs (rldskit.importers.donkey): every catalog line is imported or dropped
    # with one of these reasons. warning: the record is dropped, the rest of its episode is imported;
    # error: a whole catalog or episode is not imported.
    "CATALOG_MISSING": (ERROR, "a catalog file named by the tub's manifest.json cannot be read (none of its lines are imported)"),
    "TORN_LINE": (WARNING, "the last catalog line is cut off (a crash while recording); dropped, every line before it is kept"),
    "CORRUPT_LINE": (WARNING, "a catalog line is not valid UTF-8 JSON; dropped"),
    "CORRUPT_RECORD": (WARNING, "a catalog line is JSON but not an object (a record); dropped"),
    "INDEX_INVALID": (WARNING, "a record's _index is missing, not an integer or negative; dropped"),
    "INDEX_CONFLICT": (WARNING, "several records share an _index with different content; all of them are dropped"),
    "DUPLICATE_RECORD": (WARNING, "a record repeats an earlier one exactly (same _index, same content); the copy is dropped"),
    "INDEX_OUT_OF_ORDER": (WARNING, "catalog records are not in _index order; they are imported in _index order"),
    "DELETED": (WARNING, "a record is listed in the manifest's deleted_indexes; dropped"),
    "SESSION_ID_MISSING": (WARNING, "a record has no _session_id (or not a non-empty string) while others of its tub have one; dropped"),
    "NO_SESSION_IDS": (WARNING, "no record of a tub has a _session_id (an older tub): the whole tub is one episode named after it"),
    "TIMESTAMP_IMPLAUSIBLE": (WARNING, "a record's _timestamp_ms is before 2000-01-01 or from 2100-01-01 on (clock unset, 0, garbage); dropped"),
    "BAD_VALUE": (WARNING, "a record's timestamp, drive mode, steering/throttle or image name is missing or of the wrong type; dropped"),
    "OUT_OF_RANGE": (WARNING, "a record's executed steering or throttle is outside [-1, 1]; dropped"),
    "MISSING_IMAGE": (WARNING, "a record's image file is absent or unreadable; dropped"),
    "BAD_IMAGE": (WARNING, "a record's image cannot be decoded, re-encoded or resized; dropped"),
    "UNKNOWN_MODE": (ERROR, "a record's user/mode is not a known drive mode; its episode is quarantined"),
    "EPISODE_QUARANTINED": (ERROR, "a usable record whose episode was quarantined (the episode's reason says why); not imported"),
    "EPISODE_EXISTS": (WARNING, "a record whose episode is already in the output folder (an earlier import); left unchanged"),
    "UNREADABLE_OR_ABSENT": (WARNING, "an index inside a gap has no record on any readable catalog line"),
    # importing LeRobot datasets (rldskit.importers.lerobot): warnings are reported and the import goes on;
    # as errors (the same code) the dataset or episode is not imported
    "SOURCE": (ERROR, "the LeRobot folder is not a dataset rldskit can read (no meta/info.json, unknown version, ...)"),
    "UNIT": (WARNING, "joint positions were converted to radians from the declared unit; as an error: the unit is unknown, nothing imported"),
    "CAMERA_NAMES": (WARNING, "cameras were mapped by position or dropped; as an error: a camera the schema requires is absent"),
    "CAMERA_SHAPE": (WARNING, "a camera's video frames differ from the shape info.json declares; the video's shape is used"),
    "CAMERA_PARTIAL": (WARNING, "a camera has video for only some episodes; the others are skipped"),
    "DECLARED_ABSENT": (WARNING, "info.json declares episodes or a camera that have no data files"),
    "INDEX_GAP": (WARNING, "the episode indices with data do not run 0..N-1"),
    "PADDED": (WARNING, "signals the schema has and the source lacks are stored as placeholders"),
    "LENGTH_MISMATCH": (WARNING, "an episode's row count differs from its meta/episodes length"),
    "UNDECLARED_COLUMN": (WARNING, "a data column is not declared in info.json features; ignored"),
    "SCALAR_IN_LIST": (WARNING, "a column stores scalars in one-element lists; unwrapped"),
    "ROW_ORDER": (WARNING, "an episode's rows are not in timestamp order; sorted"),
    "TIMESTAMP_START_MISSING": (WARNING, "rldskit timestamp offsets without their episode start; kept as offsets from 0"),
    "JUNK_TASK": (WARNING, "a task string is a placeholder; the language instruction is left empty"),
    "FRAME_MISSING": (WARNING, "rows had no video frame within the tolerance; the nearest frame is used"),
    "VIDEO_SHORT": (WARNING, "a video ends before its episode's rows; the episode is truncated to the decodable frames"),
    # the HTML report (rldskit.report)
    "STEP_UNREADABLE": (ERROR, "a step chosen for the report's frame grid cannot be read or decoded"),
    # the TFDS capture builder (builders/rlds_capture)
    "CONVERT_ERROR": (ERROR, "an episode could not be read or encoded by the builder; quarantined with the exception"),
}


@dataclasses.dataclass(frozen=True)
class Issue:
    """One problem found in one episode (or the dataset). See the module docstring."""

    code: str
    severity: str
    episode: str | None
    step: int | None
    field: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def issue(code: str, episode: str | None, message: str, *, step: int | None = None,
          field: str | None = None, severity: str | None = None) -> Issue:
    """Make an :class:`Issue` with the code's default severity."""
    if code not in CODES:
        raise KeyError(f"unknown issue code {code!r}")
    return Issue(code, severity or CODES[code][0], episode, None if step is None else int(step), field, message)
