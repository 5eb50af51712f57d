#!/bin/bash
# The sweeps behind the settings tuned for a data set (docs/results.md "Sweeps"), one after another.
#
#   tools/sweeps/run.sh [DATASET/MODEL ...]      default: every sweep below, in this order
#
# Each sweep runs in ray_results/<dataset>-<model>/ and resumes there when it was stopped before:
# stop the script with kill -INT (or Ctrl-C) on its `tune` process; finished trials keep their
# results and cut-off trials go on from their last epoch next time. After each sweep (finished
# or stopped) its trials.csv, sweep.yaml, wall_clock.json and best*.yaml are copied to results/sweeps/<name>/.
# A sweep whose record there is complete (a trials.csv without unfinished trials) is not run again:
# on a fresh checkout the script goes on with the first sweep not yet recorded.
# Each sweep has a wall-clock budget of BUDGET_H hours (default 2) and its number of trials, whichever
# ends first (tune --time_budget_h: trials still training then end after their epoch and are tested).
# Two trials run side by side, one torch thread each (on 2 cores that trains about 1.3x more
# epochs an hour than one trial on two threads, measured 2026-12-07 on 2Mamba4Rec / Beauty).
# Needs the data sets prepared as docs/results.md shows (dataset/amazon-beauty, dataset/ml-1m); where one
# is missing and its source is in ../shared/datasets, the script prepares it first.
set -u
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
STORAGE=${STORAGE:-ray_results}
BUDGET_H=${BUDGET_H:-2}
ALL="amazon-beauty/Mamba2Rec amazon-beauty/SASRec amazon-beauty/Mamba4Rec
     ml-1m/Mamba2Rec ml-1m/SASRec ml-1m/Mamba4Rec ml-1m/RecMamba"
# the budget: trials per sweep, ASHA's rungs at 4, 12 and 36 epochs, runs converged by early stopping;
# no tuned settings under the sampled ones, so that a sweep reads the same base before and after them
COMMON="--scheduler=asha --grace_period=4 --reduction_factor=3 --cpus_per_trial=1 --train_targets=all
        --epochs=100 --stopping_step=10 --tuned_defaults=False --time_budget_h=$BUDGET_H"
for sweep in ${@:-$ALL}; do
    dataset=${sweep%/*}
    model=${sweep#*/}
    space=tools/sweeps/$dataset/ssm.yaml
    [ "$model" = SASRec ] && space=tools/sweeps/$dataset/SASRec.yaml
    # each data set's trials and fixed settings, and its source and length for prepare seqtext
    case $dataset in
        amazon-beauty) extra="--num_samples=16"; len=50
                       src=../shared/datasets/amazon2014-beauty-s3rec/Amazon_Beauty.txt ;;
        ml-1m) extra="--num_samples=12 --MAX_ITEM_LIST_LENGTH=200"; len=200
               src=../shared/datasets/ml-1m/ml-1m.txt ;;
        *) echo "error: no sweep for data set $dataset (amazon-beauty, ml-1m)" >&2; exit 2 ;;
    esac
    if [ ! -f "dataset/$dataset/$dataset.inter" ]; then
        [ -f "$src" ] || { echo "error: dataset/$dataset is not prepared and $src is missing" >&2; exit 2; }
        $PY -m recbole_ssm.data prepare seqtext --input "$src" --name "$dataset" --max-item-list-length $len || exit 2
    fi
    name=$dataset-$model
    record=results/sweeps/$name/trials.csv
    if [ -f "$record" ] && ! grep -q ',unfinished,' "$record"; then
        echo "=== $name: recorded in results/sweeps/$name, not run again"
        continue
    fi
    resume=""
    [ -f "$STORAGE/$name/tuner.pkl" ] && resume=--resume
    echo "=== $(date -u +%FT%T) $name $resume"
    # shellcheck disable=SC2086
    $PY run_recbole_ssm.py tune --model="$model" --dataset="$dataset" --space="$space" \
        --storage="$STORAGE" --name="$name" $COMMON $extra $resume
    rc=$?
    mkdir -p "results/sweeps/$name"
    for f in trials.csv sweep.yaml wall_clock.json best.yaml best_history_left_out.yaml; do
        [ -f "$STORAGE/$name/$f" ] && cp "$STORAGE/$name/$f" "results/sweeps/$name/"
    done
    [ $rc -eq 0 ] || { echo "=== $(date -u +%FT%T) $name stopped (exit $rc)"; exit $rc; }
done
echo "=== $(date -u +%FT%T) done"
