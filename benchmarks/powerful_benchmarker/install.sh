#!/usr/bin/env bash
# Install powerful-benchmarker 0.9.33 into the current Python environment without
# letting it downgrade pytorch-metric-learning. Usage (in the project's venv):
#   bash benchmarks/powerful_benchmarker/install.sh [python]
set -euo pipefail
python="${1:-python}"
here="$(cd "$(dirname "$0")" && pwd)"
"$python" -m pip install -q --no-deps powerful-benchmarker==0.9.33
"$python" -m pip install -q -r "$here/requirements.txt"
"$python" - <<'PY'
import pytorch_metric_learning, powerful_benchmarker
major = int(pytorch_metric_learning.__version__.split(".")[0])
assert major >= 2, f"pytorch-metric-learning {pytorch_metric_learning.__version__} was downgraded"
print(f"powerful-benchmarker {powerful_benchmarker.__version__} beside pytorch-metric-learning {pytorch_metric_learning.__version__}")
PY
