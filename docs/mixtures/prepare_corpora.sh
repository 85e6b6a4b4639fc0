#!/usr/bin/env bash
# Three domains from text this machine has, tokenized with ONE tokenizer (docs/mixtures/README.md):
#   code:     part of the Python standard library's source (the tokenizer is trained on it, 4096 tokens)
#   manpages: Debian's section-1 manual pages rendered to plain text with man(1)
#   fortunes: the `fortunes` collections (apt-get install fortunes), one fortune per document
# Usage: bash docs/mixtures/prepare_corpora.sh [OUT=data/mixtures]
set -euo pipefail
OUT=${1:-data/mixtures}
PY=${PYTHON:-.venv/bin/python}
RAW=$OUT/raw
mkdir -p "$RAW/code" "$RAW/manpages"

# code: these standard-library packages' .py files (one file = one document)
STDLIB=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
for pkg in asyncio email json http logging unittest xml concurrent importlib multiprocessing; do
  cp -r "$STDLIB/$pkg" "$RAW/code/"
done
find "$RAW/code" -name __pycache__ -prune -exec rm -rf {} +
find "$RAW/code" -type f -empty -delete  # empty __init__.py files (prepare_data.py refuses empty documents)

# manpages: the first 1200 pages of man1 (sorted), each rendered at 80 columns, bold/underline stripped
find /usr/share/man/man1 -name '*.gz' | sort | sed -n 1,1200p | while read -r page; do
  name=$(basename "$page" .gz)
  [ -e "$RAW/manpages/$name.txt" ] && continue  # rendered by an earlier run of this script
  MANWIDTH=80 man -P cat -l "$page" 2>/dev/null | col -bx > "$RAW/manpages/$name.txt" || true
done
find "$RAW/manpages" -size -200c -delete  # pages that rendered to nothing

# fortunes: every collection, split at its `%` lines, one JSON line per fortune
$PY - "$RAW/fortunes.jsonl" <<'PYEOF'
import json, pathlib, sys
out = open(sys.argv[1], "w")
for path in sorted(pathlib.Path("/usr/share/games/fortunes").iterdir()):
    if path.suffix or not path.is_file():
        continue  # .dat indexes and .u8 links
    for text in path.read_text(errors="replace").split("\n%\n"):
        if text.strip():
            out.write(json.dumps({"text": text.strip() + "\n"}) + "\n")
PYEOF

$PY tools/prepare_data.py --input "$RAW/code/**/*.py" --output "$OUT/code" --vocab-size 4096 --val-fraction 0.05 --workers 1
$PY tools/prepare_data.py --input "$RAW/manpages/*.txt" --output "$OUT/manpages" --tokenizer "$OUT/code/tokenizer.json" --val-fraction 0.05 --workers 1
$PY tools/prepare_data.py --input "$RAW/fortunes.jsonl" --output "$OUT/fortunes" --tokenizer "$OUT/code/tokenizer.json" --val-fraction 0.05 --workers 1
