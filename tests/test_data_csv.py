"""`prepare csv`: a user's own event file (CSV / TSV / semicolon, gzip, Parquet) to atomic files."""

from __future__ import annotations

import calendar
import gzip
import importlib.util
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from recbole_ssm.data.pipeline import default_name, prepare
from recbole_ssm.data.reading import DataFormatError
from recbole_ssm.data.writing import format_timestamp
from recbole_ssm.errors import UsageError
from tests.test_data import ROOT, load_recbole, read_inter, recbole_sequences, reference_kcore

HEADER = ["user_id:token", "item_id:token", "timestamp:float"]


def write(tmp_path, text: str, name: str = "events.csv") -> str:
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return str(path)


def prep(tmp_path, text_or_path: str, name: str = "t-csv", kcore: int = 0, **kw):
    """Prepare a file (or the text of events.csv) with k-core off unless asked; return (summary, header, rows)."""
    path = text_or_path if os.path.isfile(text_or_path) else write(tmp_path, text_or_path)
    kw.setdefault("verbose", False)
    summary = prepare("csv", path, output=str(tmp_path / "data" / name), properties_dir=str(tmp_path / "props"),
                      kcore=kcore, **kw)
    header, rows = read_inter(tmp_path, name)
    return summary, header, rows


def epoch(*args) -> int:
    """Whole seconds since 1970 of a UTC date and time, by the calendar module (not the code under test)."""
    return calendar.timegm((*args, *[0] * (6 - len(args))))


# ---------------------------------------------------------------------------------------
# ids, times, delimiters


def test_string_ids_with_spaces_quotes_and_numbers_stay_tokens(tmp_path):
    text = ('user_id,item_id,timestamp\n'
            '"Smith, J.",  spaced item  ,10\n'
            'u2,"say ""hi""",11\n'
            '007,42,12\n'
            '007,"7,5",13\n')
    s, header, rows = prep(tmp_path, text)
    assert header == HEADER
    assert rows == [["Smith, J.", "spaced item", "10"], ["u2", '"say ""hi"""', "11"],
                    ["007", "42", "12"], ["007", "7,5", "13"]]
    assert s["stats"]["users"] == 3 and s["stats"]["items"] == 4
    _, ds = load_recbole(tmp_path, "t-csv")  # RecBole's reader gives back the same tokens
    assert recbole_sequences(ds) == {"Smith, J.": ["spaced item"], "u2": ['say "hi"'], "007": ["42", "7,5"]}


@pytest.mark.parametrize("value,expected", [
    ("1700000000", "1700000000"),  # epoch seconds
    ("1700000000123", "1700000000.123"),  # epoch milliseconds (1e11 and more)
    ("1700000000.5", "1700000000.500"),  # decimal seconds
    ("1700000000123.0", "1700000000.123"),  # decimal milliseconds
    ("99999999999", "99999999999"),  # just below 1e11: seconds
    ("100000000000", "100000000"),  # 1e11: milliseconds
    ("-86400", "-86400"),  # before 1970
    ("2024-01-05", str(epoch(2024, 1, 5))),
    ("2024-01-05T10:00:00", str(epoch(2024, 1, 5, 10))),  # naive: UTC
    ("2024-01-05T10:00:00Z", str(epoch(2024, 1, 5, 10))),
    ("2024-01-05T10:00:00+02:00", str(epoch(2024, 1, 5, 8))),
    ("2024-01-05T01:30:00-05:30", str(epoch(2024, 1, 5, 7))),
    ("2024-01-05 10:00:00.123", f"{epoch(2024, 1, 5, 10)}.123"),
    ("2024-01-05T10:00:00.123600Z", f"{epoch(2024, 1, 5, 10)}.124"),  # rounded to the millisecond
    ("1969-12-31T23:59:58.250Z", "-1.750"),
    ("1960-06-01", str(epoch(1960, 6, 1))),
])
def test_time_formats_are_written_as_seconds(tmp_path, value, expected):
    _, _, rows = prep(tmp_path, f"user_id,item_id,timestamp\nu,i,{value}\n")
    assert rows == [["u", "i", expected]]


def test_time_rule_by_datetime_arithmetic_and_negative_formatting(tmp_path):
    when = datetime(2023, 3, 26, 1, 59, 59, 999000, tzinfo=timezone(timedelta(hours=-3)))
    ms = (when - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
    text = f"user_id,item_id,timestamp\nu,a,{when.isoformat()}\nu,b,{ms}\nu,c,{ms / 1000:.3f}\n"
    _, _, rows = prep(tmp_path, text)
    assert [r[2] for r in rows] == [f"{ms // 1000}.{ms % 1000:03d}"] * 3  # the three spellings agree
    assert [r[1] for r in rows] == ["a", "b", "c"]
    assert format_timestamp(-1500, 1000) == "-1.500" and format_timestamp(-500, 1000) == "-0.500"
    assert format_timestamp(-2000, 1000) == "-2.000" and format_timestamp(1500, 1000) == "1.500"


def test_whole_seconds_are_decided_on_the_kept_rows(tmp_path):
    # the only row with milliseconds belongs to a user the 2-core filter drops
    text = "user_id,item_id,timestamp\nu1,a,1000\nu1,b,2000\nu2,a,3000\nu2,b,4000\nu3,a,1700000000123\n"
    _, _, rows = prep(tmp_path, text, kcore=2)
    assert [r[2] for r in rows] == ["1000", "2000", "3000", "4000"]
    _, _, rows = prep(tmp_path, text, name="t-ms", kcore=0)
    assert [r[2] for r in rows] == ["1000.000", "2000.000", "3000.000", "4000.000", "1700000000.123"]


@pytest.mark.parametrize("sep", [",", "\t", ";"])
def test_delimiters_are_sniffed_and_quoted_fields_keep_theirs(tmp_path, sep):
    other = {",": ";", "\t": ",", ";": ","}[sep]
    lines = [["user_id", "item_id", f'"time{other}stamp"'],  # a quoted header field holding another delimiter
             ["u1", f'"a{sep}b"', "5"], ["u1", f"c{other}d", "6"], ["u2", "e", "7"]]
    text = "".join(sep.join(line) + "\n" for line in lines)
    s, _, rows = prep(tmp_path, text, columns={"time": f"time{other}stamp"}, max_bad=0.5)
    if sep == "\t":  # read as one field, but an id holding a tab cannot be an atomic file's token
        assert rows == [["u1", f"c{other}d", "6"], ["u2", "e", "7"]]
        assert s["inputs"][0]["malformed"]["first"] == [
            {"line": 2, "reason": "column item_id: empty id or an id with a tab/newline"}]
    else:
        assert rows == [["u1", f"a{sep}b", "5"], ["u1", f"c{other}d", "6"], ["u2", "e", "7"]]
        assert s["inputs"][0]["malformed"]["count"] == 0


def test_gzip_bom_crlf_and_default_names(tmp_path):
    path = write(tmp_path, "\ufeff\nuser_id,item_id,timestamp\r\nu1,a,1\r\n\r\n  \r\nu1,b,2\r\n", "events.csv.gz")
    s, _, rows = prep(tmp_path, path)
    assert rows == [["u1", "a", "1"], ["u1", "b", "2"]]
    assert s["inputs"][0]["blank_lines"] == 3 and s["inputs"][0]["header_lines"] == 1
    assert s["inputs"][0]["malformed"]["count"] == 0
    for file, name in (("events.csv.gz", "events"), ("My Events.tsv", "my-events"), ("clicks.parquet", "clicks"),
                       ("x/logs.csv", "logs")):
        assert default_name("csv", file) == name


def test_a_record_across_lines_is_numbered_by_its_first_line(tmp_path):
    text = 'user_id,item_id,timestamp\nu1,"two\nlines",1\nu1,"a\nb, c",soon\nu1,b,2\nu1,c,x\nu1,"d",3\n'
    s, _, rows = prep(tmp_path, text, max_bad=0.9)
    assert rows == [["u1", "b", "2"], ["u1", "d", "3"]]
    assert s["inputs"][0]["malformed"]["first"] == [
        {"line": 2, "reason": "column item_id: empty id or an id with a tab/newline"},
        {"line": 4, "reason": "column item_id: empty id or an id with a tab/newline"},
        {"line": 7, "reason": "column timestamp: not a time ('x')"}]
    assert s["inputs"][0]["lines"] == 8


def test_not_utf8_lines_are_malformed_with_their_line_numbers(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(b"user_id,item_id,timestamp\nu1,a,1\nu1,caf\xe9,2\nu1,b,3\n")
    s, _, rows = prep(tmp_path, str(path), max_bad=0.5)
    assert rows == [["u1", "a", "1"], ["u1", "b", "3"]]
    assert s["inputs"][0]["malformed"]["first"] == [{"line": 3, "reason": "not UTF-8"}]


# ---------------------------------------------------------------------------------------
# columns


@pytest.mark.parametrize("header", [
    "userId,movieId,ts",
    "visitorid,itemid,event_time",
    "customer_id,product_id,date",
    "uid,parent_asin,datetime",
    "USER_ID,Item_Id,TimeStamp",  # case does not matter
    "user_id:token,item_id:token,timestamp:float",  # RecBole's name:type headers
    "extra,user,item,time,more",
])
def test_header_aliases(tmp_path, header):
    users = ("userid", "visitorid", "customer_id", "uid", "user_id", "user")
    items = ("movieid", "itemid", "product_id", "parent_asin", "item_id", "item")
    times = ("ts", "event_time", "date", "datetime", "timestamp", "time")
    value = {**dict.fromkeys(users, "u1"), **dict.fromkeys(items, "i1"), **dict.fromkeys(times, "1700000000")}
    values = [value.get(name.split(":")[0].lower(), "other") for name in header.split(",")]
    _, _, rows = prep(tmp_path, f"{header}\n{','.join(values)}\n")
    assert rows == [["u1", "i1", "1700000000"]]


def test_first_name_in_list_order_wins_and_explicit_columns(tmp_path):
    # `user` comes first in the header, but user_id comes first in the list of names looked for
    text = "user,user_id,item,time,when,score\nA,a,x,1,100,4\nB,a,y,2,50,2\n"
    _, _, rows = prep(tmp_path, text)
    assert rows == [["a", "x", "1"], ["a", "y", "2"]]
    s, header, rows = prep(tmp_path, text, name="t-given",
                           columns={"user": "user", "item": "item", "time": "when", "rating": "score"})
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert rows == [["A", "x", "4", "100"], ["B", "y", "2", "50"]]
    assert s["stats"]["users"] == 2


def test_cli_column_flags_and_run_recbole_ssm_entry(tmp_path):
    path = write(tmp_path, "who;what;when;stars\nu1;a;2024-01-05;5\nu1;b;2024-01-06;1\nu2;a;2024-01-07;4\n")
    out = tmp_path / "data" / "mine"
    proc = subprocess.run([sys.executable, "run_recbole_ssm.py", "prepare", "csv", "--input", path, "--output",
                           str(out), "--user-col", "who", "--item-col", "what", "--time-col", "when",
                           "--rating-col", "stars", "--min-rating", "3", "--kcore", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "prepared mine from csv" in proc.stdout and "1 rows below --min-rating 3" in proc.stdout
    header, rows = read_inter(tmp_path, "mine")
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert rows == [["u1", "a", "5", str(epoch(2024, 1, 5))], ["u2", "a", "4", str(epoch(2024, 1, 7))]]


# ---------------------------------------------------------------------------------------
# order, ratings, k-core, duplicates


def test_ties_keep_file_order_and_unsorted_files_are_ordered_by_time(tmp_path):
    text = ("user_id,item_id,timestamp\n"
            "u2,z,30\nu1,c,20\nu1,a,20\nu2,y,10\nu1,b,20\nu1,first,5\nu2,x,10\n")
    _, _, rows = prep(tmp_path, text)
    # users in order of first appearance; each user's rows by time, ties in file order
    assert [r[:2] for r in rows] == [["u2", "y"], ["u2", "x"], ["u2", "z"],
                                     ["u1", "first"], ["u1", "c"], ["u1", "a"], ["u1", "b"]]
    _, ds = load_recbole(tmp_path, "t-csv")
    assert recbole_sequences(ds)["u1"] == ["first", "c", "a", "b"]


def test_rating_column_and_min_rating(tmp_path):
    text = "user_id,item_id,rating,timestamp\nu1,a,5,1\nu1,b,2.5,2\nu1,c,3,3\nu1,d,,4\nu1,e,four,5\n"
    s, header, rows = prep(tmp_path, text, columns={"rating": "rating"}, min_rating=3, max_bad=0.5)
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert rows == [["u1", "a", "5", "1"], ["u1", "c", "3", "3"]]
    assert s["steps"]["below_min_rating"] == 1
    assert s["inputs"][0]["malformed"]["first"] == [
        {"line": 5, "reason": "column rating: not a number ('')"},
        {"line": 6, "reason": "column rating: not a number ('four')"}]
    assert s["inputs"][0]["malformed"]["reasons"] == {"column rating: not a number": 2}
    with pytest.raises(UsageError, match="--min-rating needs --rating-col"):
        prep(tmp_path, text, name="t-no", min_rating=3)


def test_kcore_and_duplicates_match_a_reference(tmp_path):
    import random

    rng = random.Random(5)
    raw = [(f"u{rng.randrange(200)}", f"i{int(80 * rng.random() ** 3)}", rng.randrange(1000)) for _ in range(1500)]
    raw += raw[:100]  # exact duplicates
    text = "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in raw)
    s, _, rows = prep(tmp_path, text, kcore=5)
    uniq = list(dict.fromkeys(raw))
    expected = reference_kcore([(u, i) for u, i, _ in uniq], 5)
    assert sorted((r[0], r[1]) for r in rows) == sorted(expected)
    assert s["steps"]["duplicates"] == len(raw) - len(uniq) >= 100
    assert s["steps"]["kcore"]["rows"] == len(uniq) - len(expected) > 0
    for u in {r[0] for r in rows}:
        ts = [int(r[2]) for r in rows if r[0] == u]
        assert ts == sorted(ts)


# ---------------------------------------------------------------------------------------
# Parquet


def test_parquet_types_and_bad_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    when = [datetime(2024, 1, 5, 10, tzinfo=timezone.utc), datetime(2024, 1, 5, 11, 0, 0, 123456, tzinfo=timezone.utc),
            datetime(1960, 1, 1, tzinfo=timezone.utc), None, datetime(2024, 1, 6, tzinfo=timezone.utc)]
    table = pa.table({
        "visitorid": pa.array([7, 7, 8, 8, None], pa.int64()),
        "item": pa.array(["a", "b", "a", "b", "c"]).dictionary_encode(),
        "event_time": pa.array(when, pa.timestamp("us", tz="UTC")),
        "day": pa.array([datetime(2024, 1, d).date() for d in (1, 2, 3, 4, 5)], pa.date32()),
        "secs": pa.array([1_700_000_000, 1_700_000_000_500, None, 3, 4], pa.int64()),
        "iso": ["2024-01-05T10:00:00Z", "2024-01-05", "x", "2024-01-06", "2024-01-07"],
    })
    path = tmp_path / "clicks.parquet"
    pq.write_table(table, path, row_group_size=2)
    s, _, rows = prep(tmp_path, str(path), max_bad=0.5)
    assert rows == [["7", "a", f"{epoch(2024, 1, 5, 10)}.000"], ["7", "b", f"{epoch(2024, 1, 5, 11)}.123"],
                    ["8", "a", f"{epoch(1960, 1, 1)}.000"]]
    mal = s["inputs"][0]["malformed"]
    assert mal["first"] == [{"line": 4, "reason": "column event_time: not a time (None)"},
                            {"line": 5, "reason": "column visitorid: empty id or an id with a tab/newline"}]
    summary = (tmp_path / "data" / "t-csv" / "summary.txt").read_text()
    assert "malformed rows (skipped): 4 (column event_time" in summary
    _, _, rows = prep(tmp_path, str(path), name="t-day", columns={"time": "day"}, max_bad=0.5)
    assert [r[2] for r in rows] == [str(epoch(2024, 1, d)) for d in (1, 2, 3, 4)]
    _, _, rows = prep(tmp_path, str(path), name="t-secs", columns={"time": "secs"}, max_bad=0.5)
    assert [r[2] for r in rows] == ["1700000000.000", "1700000000.500", "3.000"]
    _, _, rows = prep(tmp_path, str(path), name="t-iso", columns={"time": "iso"}, max_bad=0.5)
    assert rows == [["7", "b", str(epoch(2024, 1, 5))], ["7", "a", str(epoch(2024, 1, 5, 10))],  # by time
                    ["8", "b", str(epoch(2024, 1, 6))]]
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(DataFormatError, match="not a readable Parquet file"):
        prep(tmp_path, str(bad), name="t-broken")


def test_parquet_without_pyarrow_is_one_line_error(tmp_path, monkeypatch):
    path = tmp_path / "events.parquet"
    path.write_bytes(b"PAR1....PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UsageError, match=r"reading Parquet needs pyarrow: pip install pyarrow \(or the \[parquet\]"):
        prep(tmp_path, str(path))
    assert not (tmp_path / "data" / "t-csv").exists()


# ---------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("content,args,message", [
    ("a,b,c\n1,2,3\n", [], "events.csv, line 1: no user column (looked for user_id, user, userId, uid, customer_id, "
                           "visitorid; columns: a, b, c): name it with --user-col"),
    ("user_id,b,c\n1,2,3\n", [], "no item column (looked for item_id, item, itemId, movieId"),
    ("user_id,item_id,c\n1,2,3\n", [], "no time column (looked for timestamp, time, ts, datetime, event_time, date; "
                                      "columns: user_id, item_id, c): name it with --time-col"),
    ("user_id,item_id,timestamp\nu,i,1\nu,i\nu,j,3,4\nu,k,4\n", [],
     "2 malformed line(s) in events.csv: line 3 (2 fields, the header has 3), 4 (4 fields, the header has 3)"),
    ("", [], "events.csv is empty: it needs a header line"),
    ("\n\n", [], "is empty"),
    ("user_id,item_id,timestamp\n", [], "events.csv has a header but no data lines"),
    ("user_id,item_id,timestamp\nu,i,yesterday\nu,j,2024-13-01\n", [],
     "no data line could be read (2 tried; line 2: column timestamp: not a time ('yesterday'))"),
    ("user_id,item_id,timestamp\nu,i,1\n", ["--time-col", "when"], "no column 'when' (--time-col; columns: "),
    ("user_id,item_id,timestamp\nu,i,1\n", ["--item-col", "user_id"], "the user and item columns are both 'user_id'"),
    ("user_id,item_id,timestamp\nu,i,1\n", ["--min-rating", "3"], "--min-rating needs --rating-col"),
    ('{"user_id": "U1", "parent_asin": "P1"}\n', [], "use `prepare amazon2023`"),
])
def test_bad_files_are_one_line_errors_with_exit_code_2(tmp_path, capsys, content, args, message):
    from recbole_ssm.cli import main as main_cli

    path = write(tmp_path, content)
    out = tmp_path / "o" / "x"
    code = main_cli(["prepare", "csv", "--input", path, "--output", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err.replace(str(tmp_path) + os.sep, "")
    assert not out.exists() and not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_column_flags_belong_to_csv_and_csv_files_elsewhere_point_to_it(tmp_path, capsys):
    from recbole_ssm.cli import main as main_cli

    path = write(tmp_path, "user_id\titem_id\ttimestamp\nu\ti\t1\n", "events.tsv")
    out = str(tmp_path / "o" / "x")
    assert main_cli(["prepare", "seqtext", "--input", path, "--output", out, "--user-col", "u"]) == 2
    assert "--user-col is for the csv source only" in capsys.readouterr().err
    for source in ("seqtext", "amazon2023", "movielens"):
        assert main_cli(["prepare", source, "--input", path, "--output", out]) == 2
        err = capsys.readouterr().err
        assert "use `prepare csv`" in err and err.count("\n") == 1, err
    proc = subprocess.run([sys.executable, "-m", "recbole_ssm.data", "prepare", "csv", "--input", path, "--output",
                           out, "--time-col", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no column 'nope'" in proc.stderr
    assert not os.path.exists(out)


def test_bad_lines_under_the_limit_are_listed_by_line_and_column(tmp_path):
    rows = [f"u{k % 3},i{k % 4},{1000 + k}" for k in range(40)]
    rows[9] = "u1,,1009"
    rows[19] = "u1,i2,soon"
    s, _, kept = prep(tmp_path, "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n", max_bad=0.1)
    assert len(kept) == 38
    assert s["inputs"][0]["malformed"]["first"] == [
        {"line": 11, "reason": "column item_id: empty id or an id with a tab/newline"},
        {"line": 21, "reason": "column timestamp: not a time ('soon')"}]
    text = (tmp_path / "data" / "t-csv" / "summary.txt").read_text()
    assert "malformed lines (skipped): 11 (column item_id: empty id" in text


# ---------------------------------------------------------------------------------------
# the benchmark script


def test_bench_script_smoke(tmp_path):
    script = os.path.join(ROOT, "tools", "bench_prepare_csv.py")
    spec = importlib.util.spec_from_file_location("bench_prepare_csv", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for times in ("iso", "epoch"):
        path = str(tmp_path / f"{times}.csv.gz")
        bench.generate(path, 2000, 50, 30, times, seed=1)
        s, _, rows = prep(tmp_path, path, name=f"t-{times}", kcore=5)
        assert s["inputs"][0]["rows"] == 2000 and s["inputs"][0]["malformed"]["count"] == 0
        assert rows and all(r[0].startswith("u") and r[1].startswith("i") and r[2].isdigit() for r in rows)
    proc = subprocess.run([sys.executable, "tools/bench_prepare_csv.py", "--rows", "2000", "--users", "100",
                           "--items", "50", "--keep", str(tmp_path / "bench")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("prepare csv: ") and "s wall, peak RSS " in last and " MiB" in last
    assert (tmp_path / "bench" / "out" / "events" / "events.inter").is_file()
