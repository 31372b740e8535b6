#!/usr/bin/env bash
# The peers of bench/featvis_compare.py, torch-lucent and horama, in a venv of their own: bench/.venv-peers.
#
# What it took: torch-lucent 0.1.8 (the last release) pins kornia<=0.4.1 and, through its metadata, an old
# torch plus test tools (pytest, coveralls, scikit-learn), so pip's resolver would replace this project's torch;
# everything is therefore installed with --no-deps, listing by hand what the two really import at run time:
# kornia 0.4.1 (lucent's transforms), decorator (lucent.optvis.objectives), tqdm (both), einops (horama's
# feature_accentuation, imported by its __init__). IPython (lucent.misc.io) and matplotlib (horama.plots) go
# in with their dependencies. torch, torchvision, numpy,
# pillow, matplotlib and tqdm are not reinstalled: a .pth file puts ../.venv's site-packages on the peers'
# sys.path (after their own site-packages), and pip counts what it finds there as installed. pip then prints
# "ERROR: pip's dependency resolver ... torch-lucent 0.1.8 requires coverage, ..." (its test tools, left out
# on purpose): expected, harmless.
# That .pth is a plain path, so the main venv's own .pth files (its editable install of featviz_report) are
# not read: run the benchmark from the repository root, where ``-m`` finds featviz_report anyway.
# horama 0.3.0 needs crops_per_iteration >= 2 (with 1, a squeeze in common.optimization_step drops the batch
# axis and F.interpolate fails); kornia 0.4.1 still runs on torch 2.x for what lucent calls.
#
# Run from anywhere: bench/peers_env.sh (re-running reuses the venv and only installs what is missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN="$ROOT/.venv"
PEERS="$ROOT/bench/.venv-peers"

if [ ! -x "$MAIN/bin/python" ]; then
    echo "no $MAIN/bin/python: set up the project's venv first (make test, or see the Makefile)" >&2
    exit 1
fi
if [ ! -x "$PEERS/bin/python" ]; then
    "$MAIN/bin/python" -m venv "$PEERS"  # from a venv's python, venv uses the same base interpreter
fi

main_site="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
peers_site="$("$PEERS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$main_site" >"$peers_site/main_venv.pth"

pip=("$PEERS/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --no-deps torch-lucent==0.1.8 horama==0.3.0 kornia==0.4.1 decorator tqdm einops
"${pip[@]}" ipython matplotlib

"$PEERS/bin/python" - <<'EOF'
import torch, kornia, lucent.optvis.render, horama
print(f"peers ready: torch {torch.__version__} (shared), kornia {kornia.__version__}, horama {horama.__version__}")
EOF
