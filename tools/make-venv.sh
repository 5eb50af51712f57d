#!/usr/bin/env bash
# Creates the project's virtual environment for `make` (VENV, default .venv) with a supported
# Python, 3.10 to 3.13: PYTHON if given, else the first of python3, python3.13 ... python3.10
# (on PATH, then under pyenv) that is one of those. torch is installed first, pinned
# (TORCH_VERSION), so that nothing pulls another build of it.
#   Python 3.10/3.11: pip, RecBole as declared (Ray 2.6.3); constraints.txt on 3.11 (the exact
#                     versions the project is tested with).
#   Python 3.12/3.13: uv with overrides.txt, which lifts RecBole's ray<=2.6.3 (no wheel there).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

# From a shell with $VENV activated, $VENV/bin comes first on PATH: look for interpreters as if
# it were not (picking $VENV's own python3 would delete it while recreating $VENV with it).
if [ -d "$VENV/bin" ]; then
    path=""
    IFS=: read -r -a entries <<< "$PATH"
    for entry in "${entries[@]}"; do
        if [ -n "$entry" ] && ! [ "$entry" -ef "$VENV/bin" ]; then path="${path:+$path:}$entry"; fi
    done
    PATH=$path
fi

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
supported() { case "$1" in 3.10|3.11|3.12|3.13) return 0 ;; *) return 1 ;; esac; }

pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        if ! command -v "$PYTHON" >/dev/null 2>&1; then
            echo "error: PYTHON=$PYTHON not found; give a Python 3.10-3.13 interpreter, e.g. make PYTHON=python3.12" >&2
            exit 2
        fi
        local v
        if ! v=$(version_of "$PYTHON"); then
            echo "error: PYTHON=$PYTHON does not run here (a pyenv shim of a version not selected?);" \
                 "give its full path, e.g. make PYTHON=\$(pyenv root)/versions/3.12.1/bin/python3.12" >&2
            exit 2
        fi
        if ! supported "$v"; then
            echo "error: PYTHON=$PYTHON is Python $v; recbole-ssm needs Python 3.10-3.13" >&2
            exit 2
        fi
        command -v "$PYTHON"; return
    fi
    local c v
    for c in python3 python3.13 python3.12 python3.11 python3.10; do
        if command -v "$c" >/dev/null 2>&1 && v=$(version_of "$c") && supported "$v"; then
            command -v "$c"; return
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        for v in 3.13 3.12 3.11 3.10; do
            for c in "$(pyenv root)"/versions/"$v".*/bin/python"$v"; do
                if [ -x "$c" ]; then echo "$c"; return; fi
            done
        done
    fi
    local found; found=$(version_of python3 || true)
    echo "error: no Python 3.10-3.13 found (python3 is ${found:-missing}); install one (e.g." \
         "'apt install python3.12' or 'pyenv install 3.12') and run make PYTHON=/path/to/python3.12" >&2
    exit 2
}

py=$(pick_python)
version=$(version_of "$py")
stamp="$VENV/.installed-stamp"
want="$py $version torch==$TORCH_VERSION"
same=false
if [ -f "$stamp" ] && [ "$(head -1 "$stamp")" = "$want" ]; then same=true; fi
if $same; then
    fresh=true
    for f in setup.cfg pyproject.toml constraints.txt overrides.txt; do
        if [ "$f" -nt "$stamp" ]; then fresh=false; fi
    done
    if $fresh; then exit 0; fi
    echo "updating $VENV: the package's requirements changed" >&2
else
    if [ -d "$VENV" ]; then
        echo "recreating $VENV for Python $version ($py)" >&2
        rm -rf "$VENV"
    fi
    echo "setting up $VENV with Python $version ($py), torch $TORCH_VERSION" >&2
    "$py" -m venv "$VENV"
fi
vpy="$VENV/bin/python"
case "$version" in
3.10|3.11)
    constraints=()
    if [ "$version" = 3.11 ]; then constraints=(-c constraints.txt); fi
    "$vpy" -m pip install -q "torch==$TORCH_VERSION"
    "$vpy" -m pip install -q "${constraints[@]}" -e ".[dev,parquet,serve]"
    "$vpy" -m pip check
    ;;
*)
    "$vpy" -m pip install -q uv
    uv=("$VENV/bin/uv" pip)
    "${uv[@]}" install -q --python "$vpy" "torch==$TORCH_VERSION"
    "${uv[@]}" install -q --python "$vpy" --override overrides.txt -e ".[dev,parquet,serve]"
    # The one incompatibility uv may report is the pin overrides.txt lifts on purpose.
    report=$("${uv[@]}" check --python "$vpy" 2>&1) || {
        others=$(printf '%s\n' "$report" | grep -i "requires" | grep -v "recbole. requires .ray>=1.13.0,<=2.6.3." || true)
        if [ -n "$others" ]; then printf '%s\n' "$report" >&2; exit 1; fi
        echo "uv pip check: only RecBole's ray<=2.6.3 pin is unmet (lifted by overrides.txt)" >&2
    }
    ;;
esac
echo "$want" > "$stamp"
