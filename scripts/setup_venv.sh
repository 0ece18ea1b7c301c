# Sourced by test.sh and demo.sh: make the virtual environment $VENV (default .venv) with Python 3.12
# (else 3.11), and install the package with the tested pins, skipping the install when nothing it
# depends on changed since the last one.
# Interpreter: $ISC_PYTHON if set, else python3.12 on PATH, else pyenv's 3.12, else the same for 3.11.

find_python() {
    local version candidate
    for version in 3.12 3.11; do
        for candidate in "python$version" \
            "$(command -v pyenv >/dev/null && ls -d "$(pyenv root)"/versions/"$version"*/bin/python"$version" 2>/dev/null | sort -V | tail -n 1)"; do
            # a pyenv shim is on PATH even when that version is not selected: check it really runs
            if [ -n "$candidate" ] && "$candidate" -c 'import sys' >/dev/null 2>&1; then
                command -v "$candidate"
                return
            fi
        done
    done
    command -v python3
}

VENV=${VENV:-.venv}
PYTHON=${ISC_PYTHON:-$(find_python)}
WANTED_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$VENV/bin/python" ] \
    && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$WANTED_VERSION" ]; then
    echo "$VENV holds another Python: making it again with $WANTED_VERSION" >&2
    rm -rf "$VENV"
fi
echo "Python $WANTED_VERSION: $PYTHON -> $VENV" >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# the install depends on the metadata and the pins only (the package itself is installed editable)
STAMP="$VENV/.isc-install-stamp"
WANTED_STAMP="$WANTED_VERSION $(cat setup.cfg pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANTED_STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e '.[dev,sscd]'
    echo "$WANTED_STAMP" > "$STAMP"
else
    echo "$VENV is up to date with setup.cfg and constraints.txt: install skipped" >&2
fi
