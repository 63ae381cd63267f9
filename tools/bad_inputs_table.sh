#!/usr/bin/env bash
# Runs the CLI tests and prints every refused bad input they check as a markdown table row:
# | test | what | the one error line |. docs/RELIABILITY.md's table is this script's output.
# Usage: bash tools/bad_inputs_table.sh [tests/cli/x.sh ...]   (from the repository root)
set -u
scripts=("$@")
[ ${#scripts[@]} -eq 0 ] && scripts=(tests/cli/*.sh)
echo "| # | test | bad input | the one line mapo prints |"
echo "|---|---|---|---|"
root=$(pwd) # paths inside the repository are shown relative to it
for s in "${scripts[@]}"; do
  name=$(basename "$s" .sh)
  bash "$s" 2>/dev/null | grep -E '^  ok: .* -> mapo: error: ' | while IFS= read -r line; do
    what=${line#  ok: }; what=${what%% -> mapo: error: *}
    msg=${line#* -> mapo: error: }
    msg=$(printf '%s' "$msg" | sed -E "s#$root/##g" | sed -E 's#/tmp/mapo_cli\.[A-Za-z0-9]+#$TMP#g; s/\|/\\|/g')
    printf '| %s | %s | %s | `%s` |\n' "@" "$name" "$what" "$msg"
  done
done | awk '{ sub(/\| @ \|/, "| " ++n " |"); print }'
