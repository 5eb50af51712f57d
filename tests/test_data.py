"""The raw-data converter: each source's real layout, built here, in and out of RecBole."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict

import numpy as np
import pytest

from recbole_ssm.data.pipeline import prepare
from recbole_ssm.data.reading import DataFormatError
from recbole_ssm.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEAUTY = os.path.join(ROOT, "..", "shared", "datasets", "amazon2014-beauty-s3rec", "Amazon_Beauty.txt")
if not os.path.isfile(BEAUTY):
    BEAUTY = "/work/shared/datasets/amazon2014-beauty-s3rec/Amazon_Beauty.txt"


def run(tmp_path, source, input, name, **kw):
    """Prepare into tmp_path/data/NAME with the dataset yaml under tmp_path/props."""
    kw.setdefault("verbose", False)
    return prepare(source, str(input), output=str(tmp_path / "data" / name),
                   properties_dir=str(tmp_path / "props"), **kw)


def read_inter(tmp_path, name):
    with open(tmp_path / "data" / name / f"{name}.inter", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    return rows[0], rows[1:]


def load_recbole(tmp_path, name, **extra):
    """Load a prepared data set through RecBole with recbole-ssm's config precedence."""
    from recbole.data import create_dataset

    from recbole_ssm import compat
    from recbole_ssm.quick_start import build_config

    config, _ = build_config(
        model="SASRec", dataset=name,
        config_file_list=[str(tmp_path / "props" / "dataset" / f"{name}.yaml")],
        config_dict={"data_path": str(tmp_path / "data"), "show_progress": False, **extra},
    )
    with compat.quiet_recbole():  # the known pandas warnings of RecBole's loader, as the package runs it
        return config, create_dataset(config)


def recbole_sequences(ds) -> dict:
    """{user token: [item tokens in RecBole's time order]} from a loaded dataset."""
    feat = ds.inter_feat
    if not hasattr(feat, "sort_values"):  # an Interaction once RecBole has converted it
        feat = feat.numpy() if hasattr(feat, "numpy") else {k: feat[k].numpy() for k in feat.columns}
    import pandas as pd

    df = pd.DataFrame({k: feat[k] for k in (ds.uid_field, ds.iid_field, ds.time_field)})
    df = df.sort_values([ds.uid_field, ds.time_field], kind="mergesort")
    users = ds.id2token(ds.uid_field, df[ds.uid_field].to_numpy())
    items = ds.id2token(ds.iid_field, df[ds.iid_field].to_numpy())
    seqs = defaultdict(list)
    for u, i in zip(users, items):
        seqs[str(u)].append(str(i))
    return dict(seqs)


def reference_kcore(rows, k):
    """Plain-Python iterative k-core over (user, item) pairs, for comparison."""
    rows = list(rows)
    while True:
        uc = Counter(u for u, _ in rows)
        ic = Counter(i for _, i in rows)
        kept = [(u, i) for u, i in rows if uc[u] >= k and ic[i] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


# ---------------------------------------------------------------------------------------
# seqtext


SEQ_LINES = [
    "u1 a b c d e a",  # a repeated item is a repeat interaction, kept in place
    "u2 b c d e a",
    "u3 e d c b a",
    "u4 a c b e d",
    "u5 c a e b d f",  # f has 1 row: dropped by 5-core
    "u6 a b f",  # 3 rows: dropped
]


def test_seqtext_both_layouts_order_and_recbole(tmp_path):
    seq = tmp_path / "seq.txt"
    seq.write_text("\n".join(SEQ_LINES) + "\n")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{p[0]} {it}\n" for p in (line.split() for line in SEQ_LINES) for it in p[1:]))

    s1 = run(tmp_path, "seqtext", seq, "t-seq")
    s2 = run(tmp_path, "seqtext", pairs, "t-pairs")
    h1, rows1 = read_inter(tmp_path, "t-seq")
    _, rows2 = read_inter(tmp_path, "t-pairs")
    assert h1 == ["user_id:token", "item_id:token", "timestamp:float"]
    assert [r[:2] for r in rows1] == [r[:2] for r in rows2]

    expected = reference_kcore([(p[0], it) for p in (line.split() for line in SEQ_LINES) for it in p[1:]], 5)
    assert [tuple(r[:2]) for r in rows1] == expected
    assert s1["stats"]["interactions"] == len(expected) == s2["stats"]["interactions"]
    assert s1["steps"]["kcore"]["users"] == 1 and s1["steps"]["kcore"]["items"] == 1
    assert s1["steps"]["kcore"]["rows"] == sum(len(line.split()) - 1 for line in SEQ_LINES) - len(expected)
    ts = [int(r[2]) for r in rows1]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)

    _, ds = load_recbole(tmp_path, "t-seq")
    assert ds.inter_num == len(expected)
    assert ds.user_num - 1 == len({u for u, _ in expected})  # RecBole adds [PAD]
    assert ds.item_num - 1 == len({i for _, i in expected})
    seqs = recbole_sequences(ds)
    for line in SEQ_LINES[:4]:
        user, *items = line.split()
        assert seqs[user] == items
    assert (tmp_path / "data" / "t-seq" / "t-seq.yaml").read_text() == (
        tmp_path / "props" / "dataset" / "t-seq.yaml").read_text()


def test_seqtext_training_lengths_in_both_layouts(tmp_path):
    from recbole_ssm.data.seqtext import training_lengths

    seq = tmp_path / "seq.txt"
    seq.write_text("\n".join(SEQ_LINES) + "\n\n")
    pairs = tmp_path / "pairs.txt"  # one user over several lines, users interleaved
    pairs.write_text("u2 b\nu1 a\nu2 c d\nu1 b\nu3 x\nu2 e\n")
    expected = [len(line.split()) - 1 - 2 for line in SEQ_LINES]  # every user has at least 3 items
    assert training_lengths(str(seq)) == expected
    assert training_lengths(str(pairs)) == [2, 0, 0]  # u2: 4 items, u1: 2, u3: 1
    packed = tmp_path / "pairs.txt.gz"  # gzipped, as `prepare seqtext` reads it
    packed.write_bytes(gzip.compress(pairs.read_bytes()))
    assert training_lengths(str(packed)) == [2, 0, 0]


def test_seqtext_iterative_kcore_needs_several_passes(tmp_path):
    # w0 and the x users have 5 rows each, but one of them is a rare item (q, q2); only after
    # pass 1 drops those items do these users fall to 4 rows and go in pass 2
    lines = [f"v{n} " + " ".join(f"p{j}" for j in range(5)) for n in range(5)]  # a 5x5 block
    lines.append("w0 p0 p1 p2 p3 q")  # w0 has 5 rows, but q has 1: dropping q leaves w0 with 4
    lines += [f"x{n} q2 p0 p1 p2 p3" for n in range(3)]  # q2 has only 3 users
    path = tmp_path / "chain.txt"
    path.write_text("\n".join(lines) + "\n")
    s = run(tmp_path, "seqtext", path, "t-chain")
    _, rows = read_inter(tmp_path, "t-chain")
    pairs = [(r[0], r[1]) for r in rows]
    expected = reference_kcore([(p[0], it) for p in (x.split() for x in lines) for it in p[1:]], 5)
    assert pairs == expected
    assert s["steps"]["kcore"]["passes"] >= 2
    uc, ic = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
    assert min(uc.values()) >= 5 and min(ic.values()) >= 5
    assert "w0" not in uc and "q" not in ic


@pytest.mark.parametrize("last", [1, 3, 7])
def test_last_keeps_each_users_newest_interactions_in_order(tmp_path, last):
    import random

    rng = random.Random(last)
    histories = {f"u{n}": [f"i{rng.randrange(30)}" for _ in range(rng.randrange(1, 12))] for n in range(25)}
    path = tmp_path / "long.txt"
    path.write_text("".join(f"{u} {' '.join(items)}\n" for u, items in histories.items()))
    s = run(tmp_path, "seqtext", path, "t-last", kcore=0, last=last)
    _, rows = read_inter(tmp_path, "t-last")
    got: dict = {}
    for user, item, *_ in rows:
        got.setdefault(user, []).append(item)
    assert got == {u: items[-last:] for u, items in histories.items()}
    assert s["steps"]["last"] == {"n": last, "rows": sum(max(0, len(h) - last) for h in histories.values())}
    assert s["last"] == last


def test_last_must_be_positive(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("u i1 i2\n")
    with pytest.raises(UsageError, match="--last must be 1 or more"):
        run(tmp_path, "seqtext", path, "t-bad", kcore=0, last=0)


def test_beauty_statistics_when_shared_data_present(tmp_path):
    if not os.path.isfile(BEAUTY):
        pytest.skip("shared Amazon Beauty 2014 data not present")
    with open(BEAUTY) as f:
        lines = [line.split() for line in f if line.strip()]
    s = run(tmp_path, "seqtext", BEAUTY, "t-beauty")
    assert s["stats"]["users"] == len(lines)
    assert s["stats"]["interactions"] == sum(len(x) - 1 for x in lines)
    assert s["stats"]["items"] == len({i for x in lines for i in x[1:]})
    assert s["stats"]["seq_len"]["max"] == max(len(x) - 1 for x in lines)


# ---------------------------------------------------------------------------------------
# movielens


def _ml1m_zip(tmp_path):
    ratings = []
    for u in range(1, 7):
        for m in range(1, 7):
            ratings.append(f"{u}::{m}::{(u + m) % 5 + 1}::{978300000 + 100 * u - m}")  # newest first in file
    ratings.append("1::1::3::978300099")  # exact duplicate of user 1's movie 1 row
    ratings.append("2::3::4::978300200")  # same time as the next row: file order decides
    ratings.append("2::4::4::978300200")
    ratings.append("7::1::5::978300000")  # user 7 has one rating: dropped by 5-core
    movies = ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Amélie (2001)::Comedy|Romance",
              '3::"Great Performances" Cats (1998)::Musical', "4::Heat (1995)::Action|Crime|Thriller",
              "5::Se7en (1995)::Crime|Thriller", "6::Fargo (1996)::Crime|Drama|Thriller",
              "9::Unrated (2000)::Drama"]
    users = [f"{u}::{'F' if u % 2 else 'M'}::25::{u}::0{u}000" for u in range(1, 8)]
    path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-1m/ratings.dat", ("\n".join(ratings) + "\n").encode("latin-1"))
        z.writestr("ml-1m/movies.dat", ("\n".join(movies) + "\n").encode("latin-1"))
        z.writestr("ml-1m/users.dat", ("\n".join(users) + "\n").encode("latin-1"))
        z.writestr("ml-1m/README", "MovieLens 1M")
    return path, ratings


def test_movielens_1m_zip(tmp_path):
    path, raw = _ml1m_zip(tmp_path)
    s = run(tmp_path, "movielens", path, "t-ml")
    assert s["steps"]["duplicates"] == 1
    assert s["steps"]["kcore"] == {"k": 5, "passes": 1, "rows": 1, "users": 1, "items": 0}
    header, rows = read_inter(tmp_path, "t-ml")
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert len(rows) == len(raw) - 2
    by_user = defaultdict(list)
    for u, i, _r, t in rows:
        by_user[u].append((int(t), i))
    for seq in by_user.values():
        assert [t for t, _ in seq] == sorted(t for t, _ in seq)
    # equal timestamps keep file order: movie 3 before movie 4 for user 2 at 978300200
    tied = [i for t, i in by_user["2"] if t == 978300200]
    assert tied == ["3", "4"]
    assert s["stats"]["seq_len"]["max"] == 8 and s["stats"]["seq_len"]["min"] == 6

    config, ds = load_recbole(tmp_path, "t-ml", load_col={
        "inter": ["user_id", "item_id", "rating", "timestamp"],
        "item": ["item_id", "movie_title", "release_year", "genre"],
        "user": ["user_id", "age", "gender", "occupation", "zip_code"]})
    assert config["MAX_ITEM_LIST_LENGTH"] == 200
    assert ds.inter_num == len(rows) and ds.user_num - 1 == 6 and ds.item_num - 1 == 6
    item_lines = (tmp_path / "data" / "t-ml" / "t-ml.item").read_text(encoding="utf-8").splitlines()
    assert len(item_lines) == 1 + 6  # movie 9 has no ratings: not written, counted
    assert "Amélie" in item_lines[2]
    title_id = ds.token2id("movie_title", "Amélie")
    assert title_id > 0
    cats = ds.item_feat["movie_title"][ds.token2id(ds.iid_field, "3")].tolist()
    assert [ds.id2token("movie_title", t) for t in cats if t] == ['"Great', 'Performances"', "Cats"]
    assert ds.user_feat is not None and len(ds.user_feat) == 7  # 6 users + padding
    assert any("1 rows for movies not in the data" in n for n in s["side_files"])


def test_movielens_min_rating_and_csv_layout(tmp_path):
    folder = tmp_path / "ml-25m"
    folder.mkdir()
    lines = ["userId,movieId,rating,timestamp"]
    for u in range(1, 7):
        for m in range(1, 8):
            lines.append(f"{u},{m},{0.5 + ((u * m) % 10) / 2},{1100000000 + u * 10 + m}")
    lines.append("3,2,oops,1100000000")  # malformed: counted, under --max-bad
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    (folder / "movies.csv").write_text('movieId,title,genres\n'
                                       '1,"American President, The (1995)",Comedy|Drama\n'
                                       '2,"Dr. ""Strange"" (2016)",Action|(no genres listed)\n')
    s = run(tmp_path, "movielens", folder, "t-csv", kcore=2, min_rating=2.5, max_bad=0.05)
    ratings = [float(x.split(",")[2]) for x in lines[1:-1]]
    assert s["steps"]["below_min_rating"] == sum(r < 2.5 for r in ratings)
    assert s["inputs"][0]["malformed"]["count"] == 1
    assert s["inputs"][0]["malformed"]["first"] == [{"line": len(lines), "reason": "non-numeric rating"}]
    _, rows = read_inter(tmp_path, "t-csv")
    assert all(float(r[2]) >= 2.5 for r in rows)
    text = (tmp_path / "data" / "t-csv" / "t-csv.item").read_text()
    assert '"American President, The"\t1995' not in text and "American President, The\t1995" in text
    assert '"Dr. ""Strange"""\t2016\tAction (no_genres_listed)' in text
    summary = (tmp_path / "data" / "t-csv" / "summary.txt").read_text()
    assert f"malformed lines (skipped): {len(lines)} (non-numeric rating)" in summary


# ---------------------------------------------------------------------------------------
# amazon2023


def _review(user, parent, rating, ts, **extra):
    obj = {"rating": rating, "title": "t", "text": "tab\there \"quoted\"", "images": [],
           "asin": parent + "-v", "parent_asin": parent, "user_id": user, "timestamp": ts,
           "helpful_vote": 0, "verified_purchase": True}
    obj.update(extra)
    return json.dumps(obj)


def _amazon_files(tmp_path, bad_lines=()):
    lines = []
    for u in range(6):
        for k in range(6):
            ts = 1_600_000_000_000 + 7 * u - 1000 * k
            lines.append(_review(f"U{u}", f"P{(u + k) % 6}", float(1 + k % 5), ts))
    lines.append(lines[3])  # exact duplicate line
    lines.append(_review("U0", "P1", 5.0, 1_600_000_000_000, asin="another-variant"))  # same parent: folds
    lines.extend(bad_lines)
    path = tmp_path / "Beauty_and_Personal_Care.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    meta = tmp_path / "meta_Beauty_and_Personal_Care.jsonl.gz"
    with gzip.open(meta, "wt", encoding="utf-8") as f:
        for p in range(7):
            f.write(json.dumps({"parent_asin": f"P{p}", "title": f"Lotion\t{p} \"big\"",
                                "main_category": "All Beauty",
                                "store": None if p == 2 else f"S{p}", "average_rating": 4.5,
                                "rating_number": 10}) + "\n")
        f.write("{broken\n")
    return path, lines


def test_amazon2023_jsonl_gz_with_meta(tmp_path):
    path, lines = _amazon_files(tmp_path)
    s = run(tmp_path, "amazon2023", path, "t-amz")
    assert s["steps"]["duplicates"] == 1
    header, rows = read_inter(tmp_path, "t-amz")
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert len(rows) == len(lines) - 1
    assert {r[1] for r in rows} == {f"P{p}" for p in range(6)}
    for u in {r[0] for r in rows}:
        ts = [float(r[3]) for r in rows if r[0] == u]
        assert ts == sorted(ts)
    first = json.loads(lines[0])
    assert [r for r in rows if r[0] == "U0" and r[1] == "P0"][0][3] == f"{first['timestamp'] / 1000:.3f}"
    assert s["inputs"][1]["malformed"]["count"] == 1  # the meta file's broken line
    assert any("1 meta rows for items not in the data" in n for n in s["side_files"])

    config, ds = load_recbole(tmp_path, "t-amz", load_col={
        "inter": ["user_id", "item_id", "rating", "timestamp"],
        "item": ["item_id", "title", "main_category", "store", "average_rating"]})
    assert config["MAX_ITEM_LIST_LENGTH"] == 50
    assert ds.inter_num == len(rows) and ds.user_num - 1 == 6 and ds.item_num - 1 == 6
    assert ds.token2id("title", 'Lotion 0 "big"') > 0
    seqs = recbole_sequences(ds)
    assert seqs["U0"] == [r[1] for r in rows if r[0] == "U0"]


def test_amazon2023_kcore_matches_reference_on_generated_file(tmp_path):
    from recbole_ssm.data.synthetic import write_amazon2023

    path = tmp_path / "Gen.jsonl"
    write_amazon2023(str(path), lines=3000, users=400, items=150, seed=3, text_words=3)
    s = run(tmp_path, "amazon2023", path, "t-gen", kcore=4)
    raw = [json.loads(x) for x in path.read_text().splitlines()]
    seen, uniq = set(), []
    for o in raw:
        key = (o["user_id"], o["parent_asin"], o["rating"], o["timestamp"])
        if key not in seen:
            seen.add(key)
            uniq.append(o)
    expected = reference_kcore([(o["user_id"], o["parent_asin"]) for o in uniq], 4)
    _, rows = read_inter(tmp_path, "t-gen")
    assert sorted((r[0], r[1]) for r in rows) == sorted(expected)
    assert s["steps"]["duplicates"] == len(raw) - len(uniq)
    assert s["steps"]["kcore"]["rows"] == len(uniq) - len(expected) > 0


def test_amazon2023_bad_lines_reported_under_threshold(tmp_path):
    bad = ['{"user_id": "U1", "parent_asin": "P1", "rating": 5.0}',  # missing timestamp
           '{"user_id": "U1", "parent_asin": "P1", "rating": 5.0, "timestamp": "soon"}',
           "not json at all"]
    path, lines = _amazon_files(tmp_path, bad)
    s = run(tmp_path, "amazon2023", path, "t-bad", max_bad=0.1)
    mal = s["inputs"][0]["malformed"]
    n = len(lines) - len(bad)
    assert mal["count"] == 3
    assert mal["first"] == [{"line": n + 1, "reason": "missing timestamp"},
                            {"line": n + 2, "reason": "non-numeric timestamp"},
                            {"line": n + 3, "reason": "bad JSON"}]


# ---------------------------------------------------------------------------------------
# errors and the atomic write


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(".")] if os.path.isdir(folder) else []


def test_too_many_bad_lines_writes_nothing(tmp_path):
    path, lines = _amazon_files(tmp_path, ["{bad json"] * 2)
    with pytest.raises(DataFormatError, match=r"2 malformed line\(s\).*--max-bad"):
        run(tmp_path, "amazon2023", path, "t-fail")
    assert not (tmp_path / "data" / "t-fail").exists()
    assert not (tmp_path / "props" / "dataset" / "t-fail.yaml").exists()
    assert _leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("source,content,guess", [
    ("amazon2023", "userId,movieId,rating,timestamp\n1,2,3.5,1100000000\n", "prepare movielens"),
    ("amazon2023", "a,b,c\n1,2,3\n", "CSV"),
    ("seqtext", '{"user_id": "U1", "parent_asin": "P1"}\n', "prepare amazon2023"),
    ("seqtext", "1::2::3::978300000\n", "prepare movielens"),
    ("movielens", "1 2 3 4 5\n2 3 4 5 6\n", "prepare seqtext"),
])
def test_wrong_source_is_one_line_error(tmp_path, source, content, guess):
    path = tmp_path / "input.txt"
    path.write_text(content)
    with pytest.raises(DataFormatError, match="does not look like") as err:
        run(tmp_path, source, path, "t-wrong")
    assert guess in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "data").exists() or _leftovers(tmp_path / "data") == []


def test_cli_exit_codes_and_one_line_errors(tmp_path, capsys):
    from recbole_ssm.cli import main as main_cli

    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n1,2,3.5,1100000000\n")
    args = ["prepare", "amazon2023", "--input", str(csv), "--output", str(tmp_path / "o" / "x"),
            "--properties-dir", str(tmp_path / "props")]
    assert main_cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "amazon2023" in err
    assert main_cli(["prepare", "seqtext"]) == 2  # no --input
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--input" in err

    proc = subprocess.run([sys.executable, "-m", "recbole_ssm.data"] + args, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o" / "x").exists()


def test_module_cli_prepares_and_refuses_overwrite(tmp_path):
    seq = tmp_path / "s.txt"
    seq.write_text("\n".join(SEQ_LINES) + "\n")
    out = tmp_path / "data" / "t-mod"
    args = [sys.executable, "-m", "recbole_ssm.data", "prepare", "seqtext", "--input", str(seq),
            "--output", str(out), "--properties-dir", str(tmp_path / "props")]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (out / "summary.txt").read_text()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--force" in proc.stderr and proc.stderr.count("\n") == 1


def test_existing_output_needs_force_and_failure_keeps_old(tmp_path, monkeypatch):
    seq = tmp_path / "s.txt"
    seq.write_text("\n".join(SEQ_LINES) + "\n")
    run(tmp_path, "seqtext", seq, "t-force")
    out = tmp_path / "data" / "t-force"
    before = (out / "t-force.inter").read_text()
    with pytest.raises(UsageError, match="already exists: pass --force"):
        run(tmp_path, "seqtext", seq, "t-force")
    # the dataset yaml alone also blocks
    (tmp_path / "data" / "t-force2").mkdir()
    (tmp_path / "props" / "dataset" / "t-force3.yaml").write_text("# hand-written\n")
    with pytest.raises(UsageError, match="t-force3.yaml already exists"):
        run(tmp_path, "seqtext", seq, "t-force3")
    assert (tmp_path / "props" / "dataset" / "t-force3.yaml").read_text() == "# hand-written\n"

    # a failure while writing (here: the summary) leaves the old folder as it was, no temp folder
    import recbole_ssm.data.pipeline as pipeline

    def boom(folder, summary):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "write_summary_files", boom)
    seq.write_text("\n".join(SEQ_LINES[:4]) + "\n")
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, "seqtext", seq, "t-force", force=True, kcore=4)
    assert (out / "t-force.inter").read_text() == before
    assert _leftovers(tmp_path / "data") == []
    monkeypatch.undo()

    s = run(tmp_path, "seqtext", seq, "t-force", force=True, kcore=4)
    assert (out / "t-force.inter").read_text() != before
    assert s["stats"]["users"] == 4
    assert _leftovers(tmp_path / "data") == []


def test_truncated_gzip_and_argument_errors(tmp_path):
    path, _ = _amazon_files(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "Cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="truncated or not valid gzip"):
        run(tmp_path, "amazon2023", cut, "t-cut")
    seq = tmp_path / "s.txt"
    seq.write_text("u a b\n")
    with pytest.raises(UsageError, match="--min-rating does not apply"):
        run(tmp_path, "seqtext", seq, "t-x", min_rating=3)
    with pytest.raises(UsageError, match="must be named like the dataset"):
        prepare("seqtext", str(seq), output=str(tmp_path / "data" / "a"), name="b",
                properties_dir=str(tmp_path / "props"))
    with pytest.raises(DataFormatError, match="no interactions left"):
        run(tmp_path, "seqtext", seq, "t-empty")
    assert not (tmp_path / "data" / "t-empty").exists()


def test_prepare_writes_only_its_output_folder_and_runs_read_the_yaml_there(tmp_path):
    from recbole_ssm.config import PROPERTIES_DIR
    from recbole_ssm.quick_start import build_config

    seq = tmp_path / "in" / "s.txt"
    seq.parent.mkdir()
    seq.write_text("\n".join(SEQ_LINES) + "\n")

    def snapshot(root):
        return sorted(os.path.join(d, f) for d, _dirs, files in os.walk(root) for f in files)

    package_before = snapshot(PROPERTIES_DIR)
    out = tmp_path / "elsewhere" / "t-own"
    summary = prepare("seqtext", str(seq), output=str(out), kcore=0, max_item_list_length=7, verbose=False)
    assert snapshot(PROPERTIES_DIR) == package_before  # nothing written into the package
    assert snapshot(tmp_path) == sorted([str(seq)] + [str(out / f) for f in summary["files"]])
    config, _ = build_config("SASRec", "t-own", None, {"data_path": str(out.parent)})
    assert config["MAX_ITEM_LIST_LENGTH"] == 7  # from out/t-own.yaml


def test_lifelong_generator_is_deterministic_with_personal_topics_recurring_and_last(tmp_path):
    from recbole_ssm.data.lifelong import generate, write

    a, own = generate(30, 400, 500, 50, 3, 0.05, seed=1)
    b, _ = generate(30, 400, 500, 50, 3, 0.05, seed=1)
    c, _ = generate(30, 400, 500, 50, 3, 0.05, seed=2)
    assert all((x == y).all() for x, y in zip(a, b)) and not all((x == y).all() for x, y in zip(a, c))
    size = 500 // 50
    shares = []
    for seq, topics in zip(a, own):
        assert seq.min() >= 1 and seq.max() <= 500 and len(seq) == 400
        topic = (seq - 1) // size
        assert set(topic[-2:].tolist()) <= set(topics.tolist())  # the two targets are personal
        shares.append(np.isin(topic[:-2], topics).mean())
    # personal with probability rate, plus noise that lands on a personal topic by chance
    assert abs(np.mean(shares) - (0.05 + 0.95 * 3 / 50)) < 0.01
    summary = write(str(tmp_path / "data" / "t-life"), users=4, length=60, items=100, topics=10, seed=3,
                    verbose=False)
    _, rows = read_inter(tmp_path, "t-life")
    assert len(rows) == 4 * 60 and summary["MAX_ITEM_LIST_LENGTH"] == 60
    first, _ = generate(4, 60, 100, 10, 3, 0.02, seed=3)
    assert [r[1] for r in rows[:60]] == [f"i{i}" for i in first[0].tolist()]


def test_lifelong_bursts_hide_the_targets_interest_from_the_last_gap_events(tmp_path):
    from recbole_ssm.data.lifelong import counting_hit, generate, write

    args = (60, 503, 400, 80, 8, 0.5)
    a, own = generate(*args, seed=4, burst=4, gap=40)
    b, _ = generate(*args, seed=4, burst=4, gap=40)
    assert all((x == y).all() for x, y in zip(a, b))
    size = 400 // 80
    hidden, returns, seen, runs = 0, 0, 0, []
    for seq, topics in zip(a, own):
        topic = (seq - 1) // size
        assert len(seq) == 503 and seq.min() >= 1 and seq.max() <= 400
        starts = [0] + [t for t in range(1, 501) if topic[t] != topic[t - 1]]
        runs += np.diff(starts + [501]).tolist()
        for t in starts[1:]:  # a run on a personal topic: a returning interest, absent from the 40 events before
            recent = set(topic[max(0, t - 40) : t].tolist())
            if topic[t] in topics and not set(topics.tolist()) <= recent:
                returns += 1
                seen += topic[t] in recent  # only a random run can land on a recent personal topic
        for j in (501, 502):  # each target: a personal topic absent from the 40 events before it, when one is
            assert topic[j] in topics
            recent = set(topic[j - 40 : j].tolist())
            if not set(topics.tolist()) <= recent:
                assert topic[j] not in recent
                hidden += 1
    assert hidden > 80 and returns > 60 * 20  # the rules above were exercised, not skipped
    assert seen < 0.1 * returns  # random runs on a recent personal topic are rare (1 topic in 10, half recent)
    # runs of geometric length with mean 4 (two runs on one topic in a row count as one here)
    assert 3.5 < np.mean(runs) < 5.0 and max(runs) > 12 and min(runs) == 1
    # reading the last 40 events gives next to nothing; the whole history tells the personal topics
    assert counting_hit(a, 400, 80, 40, skip_recent=40) < 0.1 < counting_hit(a, 400, 80, 502, skip_recent=40) - 0.3
    write(str(tmp_path / "data" / "t-burst"), users=3, length=50, items=100, topics=10, seed=3, burst=5,
          verbose=False)
    _, rows = read_inter(tmp_path, "t-burst")
    first, _ = generate(3, 50, 100, 10, 3, 0.02, seed=3, burst=5)
    assert [r[1] for r in rows[:50]] == [f"i{i}" for i in first[0].tolist()]


def test_lifelong_counting_rule_matches_a_plain_ranking_and_gains_from_the_long_history(capsys):
    from collections import Counter

    from recbole_ssm.data.lifelong import counting_hit, generate, main

    items, topics = 240, 240  # one item a topic: a user's own items recur
    hist, _ = generate(40, 600, items, topics, 3, 0.03, seed=9)

    def reference(length, skip=0, hist=hist, items=items, topics=topics):
        hits = 0
        size = items // topics
        for seq in hist:
            context = [int(v) for v in seq[:-1][-length:]]
            recent = {(int(i) - 1) // size for i in seq[:-1][-skip:]} if skip else set()
            tc = Counter((i - 1) // size for i in context)
            ic = Counter(context)
            ranked = sorted(range(1, items + 1),
                            key=lambda i: ((i - 1) // size in recent, -tc[(i - 1) // size], -ic[i], i))
            hits += int(seq[-1]) in ranked[:10]
        return hits / len(hist)

    for length in (7, 50, 599):
        assert counting_hit(hist, items, topics, length) == reference(length)
    bursts, _ = generate(40, 301, 300, 60, 6, 0.5, seed=2, burst=3, gap=20)
    for length, skip in ((10, 20), (20, 20), (120, 20), (300, 35)):
        got = counting_hit(bursts, 300, 60, length, skip_recent=skip)
        assert got == reference(length, skip, bursts, 300, 60), (length, skip)
    assert counting_hit(bursts, 300, 60, 300, skip_recent=20) > counting_hit(bursts, 300, 60, 300) + 0.2
    assert counting_hit(hist, items, topics, 599) > counting_hit(hist, items, topics, 50) + 0.2
    assert main(["--users=40", "--length=600", "--items=240", "--topics=240", "--rate=0.03", "--seed=9",
                 "--counting-hit", "50,599"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"L=50\thit@10={reference(50):.4f}", f"L=599\thit@10={reference(599):.4f}"]
    assert main(["--users=40", "--length=301", "--items=300", "--topics=60", "--personal=6", "--rate=0.5",
                 "--seed=2", "--burst=3", "--gap=20", "--counting-hit", "120"]) == 0
    # with --burst the CLI ranks the topics of the last --gap events last
    assert capsys.readouterr().out.splitlines() == [f"L=120\thit@10={reference(120, 20, bursts, 300, 60):.4f}"]
    assert main(["--counting-hit", "0"]) == 2 and main([]) == 2  # one-line errors, exit code 2
    assert main(["--burst=-1", "--counting-hit", "50"]) == 2


@pytest.mark.slow
def test_recmamba_trains_on_lifelong_histories_of_1024_through_the_cli(tmp_path, capsys):
    """Synthetic users with 1,100 events each, MAX_ITEM_LIST_LENGTH=1024, `all` regime, tiny width."""
    from recbole_ssm.cli import main
    from recbole_ssm.data.lifelong import write

    write(str(tmp_path / "data" / "life"), users=12, length=1100, items=300, topics=30, seed=5,
          max_item_list_length=1024, verbose=False)
    code = main(["--model=RecMamba", "--dataset=life", f"--data_path={tmp_path / 'data'}", "--train_targets=all",
                 "--MAX_ITEM_LIST_LENGTH=1024", "--hidden_size=16", "--num_layers=1", "--d_state=8",
                 "--train_window_batch_size=4", "--epochs=1", "--state=WARNING", "--show_progress=False"])
    out = capsys.readouterr().out
    assert code == 0 and "test  hit@10=" in out


def test_interest_events_are_5_core_shaped_time_ordered_and_predictable(tmp_path):
    """The generator behind the full-size benchmark: every user has 5 or more events in time order,
    and the next item depends on the last one (a bigram model predicts it far better than popularity
    does, and far better than it does on the same events shuffled within each user)."""
    import collections

    import numpy as np

    from recbole_ssm.data.synthetic import write_interest_events

    path = str(tmp_path / "events.csv")
    rows = write_interest_events(path, users=2000, items=300, mean_length=9.1, seed=5)
    lines = open(path).read().splitlines()
    assert lines[0] == "user_id,item_id,timestamp" and len(lines) == rows + 1
    by_user = collections.defaultdict(list)
    for line in lines[1:]:
        u, i, t = line.split(",")
        by_user[u].append((int(t), i))
    assert len(by_user) == 2000 and min(map(len, by_user.values())) >= 5
    assert 8.0 < rows / 2000 < 10.2
    assert all(all(a[0] < b[0] for a, b in zip(s, s[1:])) for s in by_user.values())
    assert not os.path.exists(path + ".tmp")

    def bigram_hits(sequences) -> float:
        following = collections.defaultdict(collections.Counter)
        for s in sequences:
            for a, b in zip(s, s[1:]):
                following[a][b] += 1
        best = {a: c.most_common(1)[0][0] for a, c in following.items()}
        pairs = [(a, b) for s in sequences for a, b in zip(s, s[1:])]
        return sum(best[a] == b for a, b in pairs) / len(pairs)

    sequences = [[i for _, i in s] for s in by_user.values()]
    rng = np.random.default_rng(0)
    shuffled = [list(rng.permutation(s)) for s in sequences]
    top = collections.Counter(i for s in sequences for i in s).most_common(1)[0][1] / rows
    assert bigram_hits(sequences) > 2 * bigram_hits(shuffled)
    assert bigram_hits(sequences) > 4 * top
