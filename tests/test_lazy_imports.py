"""The CLI defers the torchmetrics package (Lightning imports it at import time, and it imports transformers): commands
that never use it do not pay for it, and code that does gets the real package, each class once."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from litgpt_ext.lazy_imports import defer_torchmetrics
assert defer_torchmetrics()
import lightning
from litgpt_ext.finetune import sft
assert "transformers" not in sys.modules, "transformers imported by lightning"
assert "torchmetrics.functional" not in sys.modules
from torchmetrics import Metric as early
from torchmetrics.functional.text import sacre_bleu_score
import torchmetrics
from torchmetrics import Metric, RunningMean
from torchmetrics.aggregation import RunningMean as again
assert early is Metric is torchmetrics.Metric and RunningMean is again
assert abs(float(sacre_bleu_score(["a b c d e"], [["a b c d e"]])) - 1.0) < 1e-6
print("ok")
"""


def test_deferred_torchmetrics_is_the_real_package_on_first_use():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
