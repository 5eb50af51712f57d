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
