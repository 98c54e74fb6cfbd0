#!/usr/bin/env bash
# Create (or refresh) ./.venv with this project installed in editable mode.
#   bash scripts/setup.sh [EXTRAS]     EXTRAS: comma-separated, default "train"; tests use "dev"
#                                      ("llava" or "dev" also installs llava-torch --no-deps)
# Uses pip with constraints.txt (torch 2.14.1 + torchvision 0.29.1; see README). Re-running is
# cheap: nothing is reinstalled unless pyproject.toml, constraints.txt or EXTRAS changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train}"
venv="${SEMHITOK_VENV:-.venv}"
stamp="$venv/.installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16) [$extras]"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "setting up $venv with extras [$extras] (first time: a few minutes)..." >&2
python3 -m venv "$venv"
# (this machine's pip config lists local index folders that may not exist: drop those warnings)
"$venv/bin/pip" install --quiet --disable-pip-version-check -c constraints.txt -e ".[$extras]" \
  2> >(grep -v "^WARNING: Location 'file:" >&2)
# LLaVA pins torch 2.0.1 / transformers 4.36.2: its real dependencies come from the [llava] extra.
if [[ ",$extras," == *,llava,* || ",$extras," == *,dev,* ]]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "llava-torch==1.2.2.post1" \
    2> >(grep -v "^WARNING: Location 'file:" >&2)
fi
echo "$want" > "$stamp"
