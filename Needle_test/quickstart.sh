#!/usr/bin/env bash
# The quickstart's Needle test: SmolLM2-135M-Instruct before and after the quickstart's LongAlign SFT, the
# same prompts, the match scorer (offline, deterministic), then the heatmaps.
#
#   bash Needle_test/quickstart.sh needle  RUN_DIR   prompts, predictions, scores; prints both means
#   bash Needle_test/quickstart.sh heatmap RUN_DIR   RUN_DIR/needle_{base,trained}.png
#
# scripts/quickstart.sh calls both with runs/quickstart. Needle, question, lengths and depths are in
# Needle_test/config-quickstart-prompt.yaml; the haystack (standard-library docstrings with look-alikes of
# the needle) is RUN_DIR/data/haystack. An answer scores 10 if it contains "45 seconds", else 1.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP=${1:-}
RUN=${2:-runs/quickstart}
BASE=${BASE_MODEL:-data/smollm2-135m-instruct}
OUT=$RUN/needle

# needle_run NAME MODEL: predictions and match scores of one model in $OUT/NAME.
needle_run() {
  python Needle_test/pred.py --model_name_or_path "$2" --prompts_file "$OUT/prompts/prompts.jsonl" --output_dir "$OUT/$1" \
    --max_new_tokens 24
  python Needle_test/eval.py --predictions_file "$OUT/$1/predictions.jsonl" --scorer match --key_phrase "45 seconds"
}

case "$STEP" in
needle)
  python Needle_test/prompt.py --config Needle_test/config-quickstart-prompt.yaml --tokenizer "$BASE" \
    --haystack_dir "$RUN/data/haystack" --output_dir "$OUT/prompts"
  # pred/eval are resumable: start clean so that every quickstart measures its own models.
  rm -rf "$OUT/base" "$OUT/trained"
  needle_run base "$BASE"
  if [ -f "$RUN/model/config.json" ]; then
    needle_run trained "$RUN/model"
  else
    echo "needle: no trained model in $RUN/model (the train stage did not run): trained model skipped"
  fi
  ;;
heatmap)
  for name in base trained; do
    if [ -f "$OUT/$name/scores.jsonl" ]; then
      python Needle_test/vis.py --scores_file "$OUT/$name/scores.jsonl" --output_file "$RUN/needle_$name.png" \
        --title "Needle test, SmolLM2-135M-Instruct ($name)"
    fi
  done
  ;;
*)
  echo "usage: bash Needle_test/quickstart.sh needle|heatmap RUN_DIR" >&2
  exit 2
  ;;
esac
