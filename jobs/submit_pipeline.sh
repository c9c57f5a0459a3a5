#!/usr/bin/env bash
# Submit a task's whole pipeline as SLURM jobs chained with --dependency=afterok (a failed stage stops the rest):
#   teacher (CPU) -> data: convert + tokenize (CPU) -> finetune + export (GPUs) -> generate array -> merge
# The task's settings come from its task file (make task-env), the same one `make generate TASK=...` uses; every job
# gets them (and OPENAI_API_KEY / HF_TOKEN) through sbatch's environment export, never on a command line.
#
#   jobs/submit_pipeline.sh mytask                    # prints the job ids
#   FINETUNE_NODES=2 GENERATE_SHARDS=32 jobs/submit_pipeline.sh mytask
set -euo pipefail
task=${1:?usage: jobs/submit_pipeline.sh TASK   (a file artifacts/tasks/TASK.mk)}
cd "$(dirname "$0")/.."
settings=$(make -s --no-print-directory task-env TASK="$task")
set -a
eval "$settings"
set +a
mkdir -p logs

submit() {  # sbatch ARGS... -> the job id
    local id
    id=$(sbatch --parsable --export=ALL "$@")
    echo "${id%%;*}"
}

teacher=$(submit jobs/teacher.sbatch)
data=$(submit --dependency="afterok:${teacher}" jobs/data.sbatch)
finetune=$(submit --dependency="afterok:${data}" --nodes="${FINETUNE_NODES:-1}" jobs/finetune.sbatch)
generate=$(CHECKPOINT="$FINETUNE_DIR/final" INPUT="$GENERATE_INPUT" OUTPUT="$GENERATIONS" EXTRA_ARGS="$GENERATE_FLAGS" \
    submit --dependency="afterok:${finetune}" --array="0-$((GENERATE_SHARDS - 1))" jobs/generate_array.sbatch)
merge=$(OUTPUT="$GENERATIONS" submit --dependency="afterok:${generate}" jobs/merge_generations.sbatch)

echo "task ${task}: teacher ${teacher} -> data ${data} -> finetune ${finetune} -> generate ${generate} -> merge ${merge}"
echo "outputs: ${FINETUNE_DIR}/final, ${HF_DIR}, ${GENERATIONS}"
