#!/usr/bin/env bash
# Reproduces exaug/weights/default.pt from ../shared/data with exaug's own commands.
# The shipped model is FIRST=8000 iterations (about 75 minutes on 2 CPU cores). TOTAL > FIRST then
# extends the run (learning rate back at full rate, decaying over TOTAL's second half): the card's
# 16,000-step experiment, which did not beat the shipped model. Run it again to resume where it stopped.
#   bash scripts/train_default.sh            # WORK=runs/default FIRST=8000 TOTAL=FIRST by default
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${EXAUG_DATA:-../shared/data}
WORK=${WORK:-runs/default}
FIRST=${FIRST:-8000}
TOTAL=${TOTAL:-$FIRST}
mkdir -p "$WORK"

# 1. Align both labelled sets with exaug's own front end (64x64, exaug template, largest face), join them.
[ -f "$WORK/ckplus64.h5" ] || exaug align "$DATA/expressions/ckplus128" -o "$WORK/ckplus64.h5" --size 64 --faces largest -q
[ -f "$WORK/wild64.h5" ] || exaug align "$DATA/expressions/facial_expressions" -o "$WORK/wild64.h5" --size 64 --faces largest -q
[ -f "$WORK/train64.h5" ] || exaug merge "$WORK/ckplus64.h5" "$WORK/wild64.h5" -o "$WORK/train64.h5"

# 2. Train a luma model (the data is greyscale; colour input keeps its chroma), class-balanced,
#    whole CK+ subjects held out for validation.
if [ ! -f "$WORK/run/latest" ]; then
  exaug train "$WORK/train64.h5" -o "$WORK/run" --image-size 64 --channels 1 --conv-dim 32 --repeat-num 4 \
    --iters "$FIRST" --balance --sample-every 500 --save-every 500 --log-every 50 --seed 0 \
    --val-subjects S044,S070,S089,S102,S131,S506
fi
step=$(python -c "import json; print(json.load(open('$WORK/run/latest'))['step'])")
[ "$step" -ge "$FIRST" ] || exaug train --resume "$WORK/run"   # finish the first schedule as it began
[ "$TOTAL" -le "$FIRST" ] || exaug train --resume "$WORK/run" --iters "$TOTAL"

# 3. Ship the generator in half precision inside the package.
python -c "from exaug.model.checkpoint import export_generator; export_generator('$WORK/run', 'exaug/weights/default.pt', licence='non-commercial research only (trained on CK+)')"
ls -l exaug/weights/default.pt
