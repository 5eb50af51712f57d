"""docs/reference/ is generated from the code (tools/gen_reference.py): the committed pages must be
what the generator writes now, so that the command-line and configuration reference cannot drift."""

from __future__ import annotations

import importlib
import importlib.util
import os

from tests.test_docs import ROOT, broken_links

REFERENCE = os.path.join(ROOT, "docs", "reference")


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", os.path.join(ROOT, "tools", "gen_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_pages_are_what_the_generator_writes(tmp_path):
    gen = load_generator()
    assert gen.main([str(tmp_path)]) == 0
    stale = []
    for name in sorted(os.listdir(tmp_path)):
        committed = os.path.join(REFERENCE, name)
        text = open(committed, encoding="utf-8").read() if os.path.exists(committed) else None
        if text != (tmp_path / name).read_text(encoding="utf-8"):
            stale.append(f"docs/reference/{name}")
    assert not stale, f"{', '.join(stale)} out of date with the code: run `python tools/gen_reference.py`"


def test_reference_names_every_command_option_and_config_key(tmp_path):
    gen = load_generator()
    pages = gen.generate()
    from recbole_ssm.bench.cli import COMMANDS

    cli = pages["cli.md"]
    assert all(f"### `run_recbole_ssm.py bench {name}`" in cli for name in COMMANDS)
    modules = [module for _, module in gen.OPT_COMMANDS] + [COMMANDS[name] for name in gen.BENCH]
    for module in modules:
        missing = [name for name in importlib.import_module(module).OPTIONS if f"| `--{name}` |" not in cli]
        assert not missing, f"{module}: {missing}"
    config = pages["config.md"]
    for key in ("train_targets", "train_window_batch_size", "train_window_positions", "ce_negatives", "d_state",
                "causal", "eval_filter_seen", "nproc"):
        assert f"| `{key}` |" in config
    for name, text in pages.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert [bad for name in pages for bad in broken_links(str(tmp_path / name))] == []


def test_one_reader_documents_a_property_file_for_the_check_and_the_reference(tmp_path):
    """config.declarations reads set keys, their type notes and the comment lines above them, and
    keys written as comments (unset), with their continuation lines; the settings check takes its
    types from it."""
    from recbole_ssm.config import declarations
    from recbole_ssm.settings_check import _declarations

    path = tmp_path / "x.yaml"
    path.write_text("# A file for one model.\n# Second line.\n\n"
                    "# Above the key.\nhidden: 64    # (int) the width\n"
                    "drop: ~       # (float or None) dropout\n"
                    "plain: abc    # no type note\n"
                    "block:        # (dict) a mapping\n  a: 1\n\n"
                    "# window: 8   # (int, unset by default) windows of\n#   similar length\n"
                    "odd: 3        # (int, at least 1) not a type list\n")
    intro, keys = declarations(str(path))
    assert intro == "A file for one model. Second line."
    got = [(d.key, d.default, d.types, d.meaning, d.unset) for d in keys]
    assert got == [("hidden", 64, "int", "Above the key. the width", False),
                   ("drop", None, "float or None", "dropout", False),
                   ("plain", "abc", None, "no type note", False),
                   ("block", {"a": 1}, "dict", "a mapping", False),
                   ("window", None, "int, unset by default", "windows of similar length", True),
                   ("odd", 3, "int, at least 1", "not a type list", False)]
    assert _declarations(str(path)) == {"hidden": (frozenset({"int"}), 64),
                                         "drop": (frozenset({"float", "None"}), None),
                                         "block": (frozenset({"dict", "None"}), {"a": 1})}
