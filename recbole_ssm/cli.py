"""Command line: ``python run_recbole_ssm.py [SUBCOMMAND] --model=NAME --dataset=NAME [--KEY=VALUE ...]``.

Without a sub-command it trains and tests one model (RecBole's ``run_recbole`` conventions).
Sub-commands: ``prepare`` (raw data -> atomic files), ``bench`` (tables, efficiency curves,
training regimes, kernels),
``tune`` (Ray Tune sweeps),
``recommend`` (top-k items from a checkpoint), ``evaluate`` (a checkpoint's metrics),
``serve`` (an HTTP recommendation service of a checkpoint).
Misuse prints one ``error:`` line and exits with code 2.
"""

from __future__ import annotations

import os
import sys

from recbole_ssm.entry import guarded, load_command  # noqa: F401  (re-exported)
from recbole_ssm.errors import UsageError
from recbole_ssm.options import wants_help

USAGE = """\
usage: run_recbole_ssm.py [--model=NAME] [--dataset=NAME] [--config_files="a.yaml b.yaml"] [--KEY=VALUE ...]
       run_recbole_ssm.py prepare SOURCE --input PATH [...]      raw data -> RecBole atomic files
       run_recbole_ssm.py bench {table,efficiency,regimes,stream,ops} [...]  tables, curves, regimes, ...
       run_recbole_ssm.py tune --model=NAME [...]                Ray Tune sweep
       run_recbole_ssm.py recommend --checkpoint=PATH --users=U1,U2 [...]   top-k items from a saved model
       run_recbole_ssm.py evaluate --checkpoint=PATH [--eval_filter_seen=true]  a saved model's metrics
       run_recbole_ssm.py serve --checkpoint=PATH [--port=8000] [--state_dir=DIR]   an HTTP recommendation service

Trains and tests one model through RecBole's pipeline and prints valid/test metrics.
  --model         {models}
  --train_targets {targets}
  --dataset       default ml-100k (shipped with RecBole); others from dataset/<name>/<name>.inter
  --config_files  space-separated yaml files, applied after the property files, before --KEY=VALUE
  --KEY=VALUE     any RecBole or model setting, e.g. --epochs=3 --learning_rate=1e-3
  --resume=PATH   continue an interrupted run from its <checkpoint>-resume.pth (its own settings)
  --nproc=N       data-parallel training in N processes (docs/distributed.md; torchrun for several machines)
"""


def usage() -> str:
    """USAGE, with the models and their default ``train_targets`` read from the registry and the
    models' property files (``recbole_ssm.models.MODELS``)."""
    import textwrap

    from recbole_ssm.config import property_files, read_yaml
    from recbole_ssm.models import MODELS
    from recbole_ssm.registry import ALIASES

    aliases = {model: alias for alias, model in ALIASES.items()}
    names = [f"{n} / {aliases[n]}" if n in aliases else n for n in MODELS]
    default = {}
    for name in MODELS:
        for path in property_files(name, None):
            default[name] = read_yaml(path).get("train_targets", default.get(name))
    window = [n + (" with one layer" if getattr(MODELS[n], "bidirectional", False) else "")
              for n in MODELS if default[n] == "all"]

    def wrap(text: str) -> str:
        return "\n".join(textwrap.wrap(text, 100, subsequent_indent=" " * 18, initial_indent=" " * 18)).lstrip()

    models = wrap(f"a recbole-ssm model ({', '.join(names)}) or any of RecBole's (Caser, NARM, ...)")
    targets = wrap("last (RecBole's one sample per prefix), all (every position; causal models) or cloze (masked "
                   f"items, one pass per window; bidirectional models); default all for {', '.join(window)}, "
                   "last for the others")
    return USAGE.replace("{models}", models).replace("{targets}", targets)


SUBCOMMANDS = {
    "prepare": "recbole_ssm.data.cli",
    "bench": "recbole_ssm.bench.cli",
    "tune": "recbole_ssm.tune.cli",
    "recommend": "recbole_ssm.recommend",
    "evaluate": "recbole_ssm.evaluate",
    "serve": "recbole_ssm.serve.cli",
}


def split_run_args(argv: list[str]) -> tuple[str | None, str | None, list[str], dict]:
    """Split ``argv`` into (model, dataset, config files, overrides)."""
    from recbole_ssm.config import parse_overrides

    overrides = parse_overrides(argv)
    model = overrides.pop("model", None)
    dataset = overrides.pop("dataset", None)
    files = overrides.pop("config_files", None)
    if files is not None and not isinstance(files, str):
        raise UsageError("--config_files takes space-separated paths, e.g. --config_files=\"a.yaml b.yaml\"")
    for name, value in (("--model", model), ("--dataset", dataset)):
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{name} takes a name, got {value!r}")
    return model, dataset, (files.split() if files else []), overrides


def format_result(out) -> str:
    """What a training run prints: the run in one line, its valid and test metrics, and where its
    checkpoint went (``out``: ``quick_start.RunOutput``)."""
    from recbole_ssm.utils import best_epoch, format_metrics

    lines = [f"model={out.config['model']} dataset={out.config['dataset']} "
             f"params={out.params[0]} (without embeddings {out.params[1]}) "
             f"fit={out.timings.get('fit_s', 0):.1f}s"]
    # the regime trained and where early stopping found the kept checkpoint (0-based epochs)
    trainer = out.trainer
    scores = trainer.valid_scores if trainer is not None else out.timings.get("valid_scores")
    epochs = trainer.epoch_times if trainer is not None else out.timings.get("epoch_times")
    if scores and epochs:
        best = best_epoch(scores, bool(out.config["valid_metric_bigger"]))
        lines[0] += f" train_targets={out.config['train_targets'] or 'last'} epochs={len(epochs)} best_epoch={best}"
    for name, res in (("valid", out.result["best_valid_result"]), ("test", out.result["test_result"])):
        lines.append(format_metrics(name, res))
    if out.saved_model_file:
        lines.append(f"saved {out.saved_model_file}")
        command = f"python run_recbole_ssm.py recommend --checkpoint={out.saved_model_file} --users=all"
        lines.append(f"  every user's top 10: {command}")
    return "\n".join(lines)


def run_main(argv: list[str]) -> int:
    from recbole_ssm.quick_start import run

    model, dataset, files, overrides = split_run_args(argv)
    resume = overrides.pop("resume", None)
    if resume is not None and (model or dataset or files or overrides or not isinstance(resume, str)):
        raise UsageError("--resume=PATH continues a run with that run's own settings: give it alone")
    out = run(model, dataset, files, overrides, saved=True, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, every rank has the result: one prints it
        print(format_result(out), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(usage(), end="")
        return 0
    return guarded(_dispatch, argv)


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        return run_main(argv)
    module = SUBCOMMANDS.get(argv[0])
    if module is None:
        raise UsageError(f"unknown sub-command {argv[0]!r}: use one of {', '.join(SUBCOMMANDS)} or --model=NAME")
    return int(load_command(module, f"sub-command {argv[0]!r}").main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
