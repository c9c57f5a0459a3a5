# What the two demo tasks share: three search queries per document, taught by the local stand-in teacher (an
# OpenAI-compatible server with 10 % injected faults and a rate limit, started around distill_query, answering by a
# fixed rule over the document); 80 held-out documents measure the student's fidelity. A task file sets RUN and
# its student, then includes this file.
RECORDS        := artifacts/demo/records.jsonl
HELDOUT        := artifacts/demo/heldout.jsonl
TEACHER_PROMPT := prompts/search_queries.md
TEACHER_MODEL  := gpt-4o-mini
TEACHER_FLAGS  := --rpm 3000 --concurrency 8 --timeout 0.5
TEACHER_WRAP   := $(BIN)/python -m distill.teacher.fake_server --latency_s 0.05 --rpm 3000 --fault_rate 0.1 --stall_s 1 --
STUDENT_PROMPT := prompts/student_search_queries.md
# the student learns the whole list as one answer; fidelity scores it item by item
PARSER         := raw
ITEMS          := lines
CONVERT_FLAGS  := --val_fraction 0.1
FINETUNE       := finetune_sft
# the folder names the rest of the demo (distill/demo.py) reads
DATA_DIR       := $(RUN)/distilled
FINETUNE_DIR   := $(RUN)/sft-distilled
HF_DIR         := $(RUN)/hf-distilled
GENERATIONS    := $(RUN)/distilled_generations.jsonl
