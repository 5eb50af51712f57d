"""Writing a prepared data set: RecBole's atomic .inter file, its dataset yaml and the summary."""

from __future__ import annotations

import os

import numpy as np
import yaml

from recbole_ssm.data.reading import Interactions


def cell(value: object) -> str:
    """One field of an atomic file: tabs/newlines become spaces; quotes are CSV-quoted so
    RecBole's pandas reader gives back the same text."""
    s = "" if value is None else str(value)
    s = s.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    if '"' in s:
        s = '"' + s.replace('"', '""') + '"'
    return s


def write_table(path: str, header: list[str], rows) -> int:
    """Write a header and rows (iterables of already formatted cells); returns the row count."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        buf = []
        for row in rows:
            buf.append("\t".join(row))
            n += 1
            if len(buf) >= 65536:
                f.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            f.write("\n".join(buf) + "\n")
    return n


def format_timestamp(ts: int, scale: int) -> str:
    if scale == 1:
        return str(ts)
    if scale == 1000:
        sec, ms = divmod(abs(int(ts)), 1000)
        return f"{'-' if ts < 0 else ''}{sec}.{ms:03d}"
    raise ValueError(f"unsupported timestamp scale {scale}")


def write_inter(path: str, table: Interactions, order: np.ndarray, has_rating: bool, ts_scale: int,
                chunk: int = 262144) -> int:
    """The ``.inter`` file, in ``order``; written in chunks so memory stays flat."""
    u, i, r, t = table.columns()
    users = [cell(x) for x in table.users]
    items = [cell(x) for x in table.items]
    header = ["user_id:token", "item_id:token"] + (["rating:float"] if has_rating else [])
    header.append("timestamp:float")

    def rows():
        for start in range(0, len(order), chunk):
            o = order[start:start + chunk]
            uu, ii, tt = u[o].tolist(), i[o].tolist(), t[o].tolist()
            rr = [f"{x:g}" for x in r[o].tolist()] if has_rating else None
            for k in range(len(o)):
                ts = format_timestamp(tt[k], ts_scale)
                if rr is None:
                    yield (users[uu[k]], items[ii[k]], ts)
                else:
                    yield (users[uu[k]], items[ii[k]], rr[k], ts)

    return write_table(path, header, rows())


def sequence_stats(table: Interactions, order: np.ndarray) -> dict:
    u = table.columns()[0][order]
    i = table.columns()[1][order]
    lengths = np.bincount(u)
    lengths = lengths[lengths > 0]
    n_users, n_items = int(lengths.size), int(np.unique(i).size)
    return {
        "users": n_users,
        "items": n_items,
        "interactions": int(len(order)),
        "density": float(len(order) / (n_users * n_items)) if n_users and n_items else 0.0,
        "seq_len": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                    "mean": round(float(lengths.mean()), 2), "max": int(lengths.max())},
    }


def dataset_yaml(name: str, source: str, has_rating: bool, kcore: int, max_len: int,
                 data_path: str | None, extra_load_col: dict | None = None) -> str:
    """The ``<name>.yaml`` text written beside a prepared data set's atomic files."""
    inter = ["user_id", "item_id"] + (["rating"] if has_rating else []) + ["timestamp"]
    interval = f"[{kcore},inf)" if kcore > 1 else "[0,inf)"
    body: dict = {}
    if data_path:
        body["data_path"] = data_path
    body["load_col"] = {"inter": inter}
    body["user_inter_num_interval"] = interval
    body["item_inter_num_interval"] = interval
    body["MAX_ITEM_LIST_LENGTH"] = max_len
    head = (f"# {name}: written by `python -m recbole_ssm.data prepare {source}`.\n"
            f"# The atomic files are already {kcore}-core; the intervals below leave them as they are.\n")
    if extra_load_col:
        cols = "; ".join(f"{k}: [{', '.join(v)}]" for k, v in extra_load_col.items())
        head += f"# Side features were written too; to load them add to load_col: {cols}\n"
    return head + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def format_summary(summary: dict) -> str:
    """The human-readable summary printed after a run and saved as ``summary.txt``."""
    s = summary
    st = s["steps"]
    kc = st["kcore"]
    out = [f"prepared {s['name']} from {s['source']} -> {s['output']}"]
    for rd in s["inputs"]:
        mal = rd["malformed"]
        lines = f"{rd['lines']} lines, " if rd.get("unit", "line") == "line" else ""  # Parquet: rows only
        line = (f"  read {rd['file']}: {lines}{rd['rows']} rows, "
                f"{mal['count']} malformed, {rd['blank_lines']} blank, {rd['header_lines']} header")
        out.append(line)
        if mal["count"]:
            first = ", ".join(f"{b['line']} ({b['reason']})" for b in mal["first"])
            more = ", ..." if mal["count"] > len(mal["first"]) else ""
            out.append(f"    malformed {rd.get('unit', 'line')}s (skipped): {first}{more}")
    out.append(f"  dropped: {st.get('below_min_rating', 0)} rows below --min-rating"
               + (f" {s['min_rating']:g}" if s.get("min_rating") is not None else " (not set)")
               + f", {st['duplicates']} exact duplicate rows, "
               f"{kc['rows']} rows by {kc['k']}-core "
               f"({kc['users']} users, {kc['items']} items, {kc['passes']} passes)")
    f = s["stats"]
    sl = f["seq_len"]
    out.append(f"  kept: {f['users']} users, {f['items']} items, {f['interactions']} interactions "
               f"(density {f['density']:.4%})")
    out.append(f"  sequence length: min {sl['min']}, median {sl['median']:g}, "
               f"mean {sl['mean']:g}, max {sl['max']}")
    for side in s.get("side_files", []):
        out.append(f"  {side}")
    out.append(f"  files: {', '.join(s['files'])}")
    out.append(f"  dataset config: {os.path.join(s['output'], s['name'] + '.yaml')} (read by every run of {s['name']})")
    if s.get("properties_yaml"):
        out.append(f"  also written: {s['properties_yaml']}")
    return "\n".join(out) + "\n"
