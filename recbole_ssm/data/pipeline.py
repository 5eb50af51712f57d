"""``prepare``: one raw data set in, one folder of RecBole atomic files out (or nothing)."""

from __future__ import annotations

import os
import re
import time

from recbole_ssm.data import amazon2023, movielens, seqtext
from recbole_ssm.data import csv as events
from recbole_ssm.data.filtering import filter_rows
from recbole_ssm.data.output import OutputFolder, check_targets, write_summary_files
from recbole_ssm.data.reading import SOURCES, DataFormatError, Interactions, to_whole_seconds
from recbole_ssm.data.writing import dataset_yaml, format_summary, sequence_stats, write_inter
from recbole_ssm.errors import UsageError
from recbole_ssm.utils import atomic_write_text


def default_name(source: str, path: str) -> str:
    """A dataset name from the input's file name: ``ml-1m.zip`` -> ``ml-1m``,
    ``Video_Games.jsonl.gz`` -> ``amazon-video-games``, ``Beauty.txt`` -> ``beauty``,
    ``events.csv.gz`` -> ``events``."""
    base = os.path.basename(os.path.normpath(path))
    if source == "movielens" and base in ("ratings.dat", "ratings.csv"):
        base = os.path.basename(os.path.dirname(os.path.abspath(path)))
    stem = re.sub(r"(\.jsonl|\.json|\.txt|\.dat|\.csv|\.tsv|\.zip|\.parquet|\.pq)?(\.gz)?$", "", base, flags=re.I)
    slug = re.sub(r"[^\w.\-]+", "-", stem).strip("-").lower()
    if source == "amazon2023":
        slug = "amazon-" + slug.replace("_", "-")
    return slug or source


def prepare(
    source: str,
    input: str,
    output: str | None = None,
    name: str | None = None,
    kcore: int = 5,
    min_rating: float | None = None,
    max_bad: float = 0.001,
    force: bool = False,
    properties_dir: str | None = None,
    meta: str | None = None,
    max_item_list_length: int | None = None,
    verbose: bool = True,
    last: int | None = None,
    columns: dict | None = None,
) -> dict:
    """Convert one raw data set to RecBole atomic files; returns the summary dict.

    Writes ``<output>/<name>.inter`` (plus ``.item`` / ``.user`` where the source has them),
    ``<output>/<name>.yaml`` (read by every run of the data set, see ``config.property_files``),
    ``summary.txt`` and ``summary.json`` through a temp folder renamed into place; with
    ``properties_dir``, also ``<properties_dir>/dataset/<name>.yaml``. Nothing else is written.
    ``columns`` (csv only) maps ``user`` / ``item`` / ``time`` / ``rating`` to column names. Raises
    :class:`~recbole_ssm.errors.UsageError` (nothing written) on bad arguments, the wrong
    source for the file, or more malformed lines than ``max_bad`` allows.
    """
    columns = {k: v for k, v in (columns or {}).items() if v is not None}
    name, output = _check_arguments(source, input, output, name, kcore, min_rating, max_bad, meta,
                                    max_item_list_length, last, columns)
    yaml_path = os.path.join(properties_dir, "dataset", f"{name}.yaml") if properties_dir else None
    check_targets(output, yaml_path, force)
    t0 = time.perf_counter()
    table, data, filtered = _read_and_filter(source, input, meta, max_bad, kcore, min_rating, last, columns)
    settings = {"name": name, "source": source, "output": os.path.abspath(output), "kcore": kcore,
                "min_rating": min_rating, "last": last, "max_bad": max_bad,
                "MAX_ITEM_LIST_LENGTH": max_item_list_length or data.max_len,
                "properties_yaml": os.path.abspath(yaml_path) if yaml_path else None}
    summary, text = _write(output, table, data, filtered, settings, t0)
    if yaml_path:
        atomic_write_text(yaml_path, text)
    if verbose:
        print(format_summary(summary), end="", flush=True)
    return summary


def _check_arguments(source, input, output, name, kcore, min_rating, max_bad, meta, max_item_list_length,
                     last, columns) -> tuple[str, str]:
    """One-line errors for bad arguments; returns the data set's name and output folder."""
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}: use one of {', '.join(SOURCES)}")
    if kcore < 0:
        raise UsageError(f"--kcore must be 0 or more, got {kcore}")
    if not 0 <= max_bad <= 1:
        raise UsageError(f"--max-bad is a fraction of lines between 0 and 1, got {max_bad:g}")
    if last is not None and last < 1:
        raise UsageError(f"--last must be 1 or more (interactions kept per user), got {last}")
    if max_item_list_length is not None and max_item_list_length < 1:
        raise UsageError(f"--max-item-list-length must be 1 or more, got {max_item_list_length}")
    if min_rating is not None and source == "seqtext":
        raise UsageError("--min-rating does not apply to seqtext: the text layouts have no rating")
    if columns and source != "csv":
        flags = ", ".join(f"--{k}-col" for k in columns)
        raise UsageError(f"{flags} is for the csv source only (the {source} layout names its own columns)")
    if unknown := sorted(set(columns) - {"user", "item", "time", "rating"}):
        raise UsageError(f"unknown column role(s) {', '.join(unknown)}: use user, item, time or rating")
    if min_rating is not None and source == "csv" and "rating" not in columns:
        raise UsageError("--min-rating needs --rating-col with the csv source: name the column that holds the rating")
    if meta is not None and source != "amazon2023":
        raise UsageError("--meta is for the amazon2023 source only")
    if meta is not None and not os.path.isfile(meta):
        raise UsageError(f"meta file not found: {meta} (check --meta)")
    if not os.path.exists(input):
        raise UsageError(f"input not found: {input} (check --input)")
    if source == "seqtext" and os.path.isdir(input):
        raise UsageError(f"{input} is a folder: seqtext reads one text file (--input FILE.txt)")
    if source == "csv" and os.path.isdir(input):
        raise UsageError(f"{input} is a folder: csv reads one file (--input FILE.csv, .tsv, .csv.gz or .parquet)")
    if name is None:
        name = os.path.basename(os.path.normpath(output)) if output else default_name(source, input)
    if not re.fullmatch(r"[\w.\-]+", name):
        raise UsageError(f"invalid dataset name {name!r}: use letters, digits, '.', '_' or '-' (--name)")
    output = output or os.path.join("dataset", name)
    if os.path.basename(os.path.normpath(output)) != name:
        raise UsageError(f"--output folder {output} must be named like the dataset {name!r} "
                         f"(RecBole reads DATA_PATH/{name}/{name}.inter): use --output .../{name}")
    return name, output


def _read_and_filter(source, input, meta, max_bad, kcore, min_rating, last, columns=None):
    """The source's interactions (and side readers), checked for bad lines, then k-core / rating / last-N."""
    table = Interactions()
    if source == "movielens":
        data = movielens.read(input, table)
    elif source == "amazon2023":
        data = amazon2023.read(input, table, meta)
    elif source == "csv":
        data = events.read(input, table, columns)
    else:
        data = seqtext.read(input, table)
    for reader in data.readers:
        reader.check(max_bad)
    filtered = filter_rows(table, kcore, min_rating, last)
    if filtered.steps["rows_out"] == 0:
        raise DataFormatError(f"no interactions left after filtering ({filtered.steps['rows_in']} read): "
                              f"lower --kcore (now {kcore}) or --min-rating")
    if data.whole_seconds and to_whole_seconds(table, filtered.order):
        data.ts_scale = 1
    return table, data, filtered


def _write(output, table, data, filtered, settings: dict, t0: float) -> tuple[dict, str]:
    """The atomic files, NAME.yaml and the summary, into a temp folder renamed to ``output`` (or nothing)."""
    name = settings["name"]
    parent = os.path.dirname(os.path.abspath(output))
    data_path = None if parent == os.path.abspath("dataset") else parent
    folder = OutputFolder(output)
    try:
        files = [f"{name}.inter"]
        write_inter(folder.path(f"{name}.inter"), table, filtered.order, data.has_rating, data.ts_scale)
        side = data.side(folder, name, table, filtered.order) if data.side else None
        if side:
            files += side.files
        text = dataset_yaml(name, settings["source"], data.has_rating, settings["kcore"],
                            settings["MAX_ITEM_LIST_LENGTH"], data_path, side.load_col if side else None)
        with open(folder.path(f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(text)
        files += [f"{name}.yaml", "summary.txt", "summary.json"]
        summary = {
            **{k: settings[k] for k in ("name", "source", "output")},
            "inputs": [r.as_dict() for r in data.readers + (side.readers if side else [])],
            **{k: settings[k] for k in ("kcore", "min_rating", "last", "max_bad")},
            "steps": filtered.steps,
            "stats": sequence_stats(table, filtered.order),
            "side_files": side.notes if side else [],
            "files": files,
            "properties_yaml": settings["properties_yaml"],
            "MAX_ITEM_LIST_LENGTH": settings["MAX_ITEM_LIST_LENGTH"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        write_summary_files(folder, summary)
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    return summary, text
