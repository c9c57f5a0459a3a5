# A task file: copy to artifacts/tasks/<name>.mk, edit, then `make -n report TASK=<name>` and `make report TASK=<name>`
# (or `jobs/submit_pipeline.sh <name>` on a SLURM cluster). Paths are relative to the repository root.
# The teacher's key comes from the environment (OPENAI_API_KEY); set OPENAI_BASE_URL or --base_url for another endpoint.

RUN            := artifacts/runs/example
# the teacher stage: records (JSONL with an "id"), the task prompt, the model and any more distill_query flags
RECORDS        := data/example/records.jsonl
TEACHER_PROMPT := prompts/search_queries.md
TEACHER_MODEL  := gpt-4o-mini
TEACHER_FLAGS  := --rpm 500 --tpm 200000 --concurrency 32 --max_cost_usd 50
# To try the pipeline offline first, wrap distill_query in the stand-in teacher (a local OpenAI-compatible server
# that starts around the command and answers by the prompt's shape; see docs/teacher.md):
# TEACHER_WRAP := $(BIN)/python -m distill.teacher.fake_server --latency_s 0.05 --rpm 3000 --
# convert: the student's prompt template and how an answer becomes examples (raw | lines | json:FIELD); raw: the
# student learns the whole list as the teacher wrote it (lines would make one example per query)
STUDENT_PROMPT := prompts/student_search_queries.md
PARSER         := raw
CONVERT_FLAGS  := --val_fraction 0.05
TOKENIZE_FLAGS := --max_seq_length 1024
# the student checkpoint (litgpt layout) and the finetune command + its --config YAML (any flag can follow)
STUDENT        := checkpoints/meta-llama/Llama-3.2-1B
FINETUNE       := finetune_sft
FINETUNE_CONFIG := litgpt_ext/configs/sft-lora.yaml
FINETUNE_FLAGS :=
EXPORT_FLAGS   := --dtype bf16
# generation: the prompts (default: every record's student prompt, written by convert) and generate_batch flags
# GENERATE_INPUT := data/example/new_prompts.jsonl
GENERATE_FLAGS := --max_new_tokens 256 --temperature 0.8 --top_k 200 --max_batch_size 64
GENERATE_SHARDS := 8
# fidelity + cost (`make report TASK=<name>`): records the student never trains on (the teacher answers them too),
# ITEMS := lines scores list answers item by item, FIDELITY_FLAGS follow GENERATE_FLAGS there (greedy: a stable score); the student's machine price makes its 1M-record cost comparable.
HELDOUT        := data/example/heldout.jsonl
ITEMS          := lines
FIDELITY_FLAGS := --temperature 0
REPORT_FLAGS   := --student_usd_per_hour 2.5

# How the student checkpoint is made when it is missing (HF_TOKEN from the environment for gated models).
$(STUDENT)/lit_model.pth: | $(STAMP)
	$(BIN)/litgpt download meta-llama/Llama-3.2-1B --checkpoint_dir checkpoints
