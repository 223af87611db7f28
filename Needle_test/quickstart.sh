#!/usr/bin/env bash
# The quickstart's Needle test: the untrained tiny Llama vs the one train.py trained, same prompts,
# match scorer (offline, deterministic), then the heatmaps.
#
#   bash Needle_test/quickstart.sh needle  RUN_DIR   prompts, predictions, scores; prints both means
#   bash Needle_test/quickstart.sh heatmap RUN_DIR   RUN_DIR/needle_{untrained,trained}.png
#
# scripts/quickstart.sh calls both with runs/quickstart. The needle has the shape of the synthetic
# training data's facts (longalign/synthetic.py): "The secret code of {name} is #{code}.", asked as
# "What is the secret code of {name}?", hidden in the synthetic haystack at 5 lengths (100-500
# tokens, around the training documents' 30-300) x 5 depths, so a tiny model that learned to retrieve
# such facts visibly does.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP=${1:-}
RUN=${2:-runs/quickstart}
DATA=$RUN/data
OUT=$RUN/needle

# needle_run NAME MODEL: predictions and match scores of one model in $OUT/NAME.
needle_run() {
  python Needle_test/pred.py --model_path "$2" --tokenizer "$DATA/tokenizer" \
    --prompts_file "$OUT/prompts/prompts.jsonl" --out_dir "$OUT/$1" --max_new_tokens 16
  python Needle_test/eval.py --predictions_file "$OUT/$1/predictions.jsonl" --scorer match --key_phrase 4821
}

case "$STEP" in
needle)
  python Needle_test/prompt.py --tokenizer "$DATA/tokenizer" --haystack_dir "$DATA/haystack" \
    --needle "The secret code of Kouski is #4821." --retrieval_question "What is the secret code of Kouski?" \
    --context_lengths 100,200,300,400,500 --depth_percents 0,25,50,75,100 \
    --final_context_length_buffer 50 --out_dir "$OUT/prompts"
  # pred/eval are resumable: start clean so that every quickstart measures its own models.
  rm -rf "$OUT/untrained" "$OUT/trained"
  needle_run untrained "$DATA/tiny-llama"
  if [ -f "$RUN/model/config.json" ]; then
    needle_run trained "$RUN/model"
  else
    echo "needle: no trained model in $RUN/model (the train stage did not run): trained model skipped"
  fi
  for name in untrained trained; do
    if [ -f "$OUT/$name/summary.json" ]; then
      python -c 'import json, sys; print("needle mean score, %s: %.2f / 10" % (sys.argv[2], json.load(open(sys.argv[1]))["mean"]))' \
        "$OUT/$name/summary.json" "$name"
    fi
  done
  ;;
heatmap)
  for name in untrained trained; do
    if [ -f "$OUT/$name/scores.jsonl" ]; then
      python Needle_test/vis.py --scores_file "$OUT/$name/scores.jsonl" --out "$RUN/needle_$name.png" \
        --title "Needle test, tiny Llama ($name)"
    fi
  done
  ;;
*)
  echo "usage: bash Needle_test/quickstart.sh needle|heatmap RUN_DIR" >&2
  exit 2
  ;;
esac
