#!/usr/bin/env bash
# Reproduces exaug/weights/default.pt (the geometry-guided generator) from ../shared/data with exaug's
# own commands: CK+ aligned at 128 px with face meshes (cached), 654 sequence pairs, 20 subjects held
# out (every sixth by name), the geometry model fitted, the shader and the painter trained for STEPS steps.
#   bash scripts/train_default.sh            # WORK=runs/guided STEPS=5000 DEVICE=auto
# Stopped (Ctrl-C, a closed laptop), the same command continues the run from its last saved state.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${EXAUG_DATA:-../shared/data}
WORK=${WORK:-runs/guided}
STEPS=${STEPS:-5000}
DEVICE=${DEVICE:-auto}

if [ -f "$WORK/guided.json" ]; then
  exaug train --resume "$WORK" --iters "$STEPS" --device "$DEVICE"
else
  exaug train "$DATA/expressions/ckplus128" -o "$WORK" --arch guided --iters "$STEPS" --seed 0 --device "$DEVICE"
fi

# Ship it inside the package with the licence its training data allow.
python - "$WORK/guided.generator.pt" <<'PY'
import json, sys, torch
from exaug.io.atomic import atomic_write
payload = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
meta = json.loads(payload["meta"])
payload["meta"] = json.dumps({**meta, "licence": "non-commercial research only (trained on CK+)"})
atomic_write("exaug/weights/default.pt", lambda handle: torch.save(payload, handle))
PY
ls -l exaug/weights/default.pt
