#!/usr/bin/env python
"""Score generated radiology reports: BLEU-1..4, ROUGE-L, CIDEr-D, CheXbert F1, RadGraph F1, with
bootstrap 95% intervals and an optional paired test. Offline; model files from local paths.

    python scripts/evaluate_reports.py --pred preds.jsonl --ref refs.jsonl --out-json scores.json --out-md scores.md
    python scripts/evaluate_reports.py --pred preds.jsonl --ref refs.jsonl --metrics nlg --bootstrap 1000 --seed 1
    python scripts/evaluate_reports.py --pred a.jsonl --compare b.jsonl --ref refs.jsonl \
        --chexbert-weights weights/chexbert --radgraph-model weights/radgraph-xl.tar.gz --uncertain negative
    python scripts/evaluate_reports.py --pred preds.jsonl --ref refs.jsonl --skip-missing   # NLG only if no weights
    python scripts/evaluate_reports.py --pred preds.jsonl --ref refs.jsonl --allow-partial  # score the common ids

Same as `mxr0 eval reports ...`; `--help` lists every option.
"""

import sys

from mxr0.eval.reports.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
