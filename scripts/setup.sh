#!/usr/bin/env bash
# Set up aiofs in ./.venv on a fresh Debian machine with Python 3.11.
#   scripts/setup.sh            -> the package and the `aiofs` command
#   scripts/setup.sh dev        -> plus what the test suite needs (any setup.cfg extras, comma-separated)
# Debian packages the project needs are installed here when we are root (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"

# Debian packages: grows as features land. The plain set-up needs none of them.
DEBIAN_PACKAGES=()
case ",$EXTRAS," in
    # zstd: tests check stored objects with `zstd -d`; fuse3: `aiofs mount` (libfuse3 and
    # fusermount3; tests mount for real)
    *,dev,*|*,all,*) DEBIAN_PACKAGES+=(zstd fuse3) ;;
    *,fuse,*) DEBIAN_PACKAGES+=(fuse3) ;;
esac
case ",$EXTRAS," in
    # restic: the dedup benchmark's baseline (`python -m benchmarks dedup`)
    *,dev,*|*,all,*|*,bench,*) DEBIAN_PACKAGES+=(restic) ;;
esac
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    DEBIAN_PACKAGES+=(python3-venv)
fi
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "aiofs setup: please install the Debian packages: ${missing[*]}" >&2
        exit 1
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "$EXTRAS" ]; then
    .venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
else
    .venv/bin/python -m pip install -q -e .
fi
