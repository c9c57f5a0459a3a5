# The demo task, offline: three search queries per document, taught by the local stand-in teacher (an
# OpenAI-compatible server with 10 % injected faults and a rate limit, started around distill_query, answering by a
# fixed rule over the document) to a tiny random-init student; 80 held-out documents measure its fidelity.
#   make report TASK=demo        (make demo runs it, then the stages outside a task pipeline)
RUN            := artifacts/runs/demo
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
TOKENIZE_FLAGS := --max_seq_length 256 --prompt_style default
STUDENT        := $(RUN)/student
FINETUNE       := finetune_sft
FINETUNE_CONFIG := artifacts/tasks/demo-finetune.yaml
GENERATE_FLAGS := --max_new_tokens 32 --temperature 0 --precision 32-true
BASELINE_FLAGS := --prompt_style default
# the folder names the rest of the demo (distill/demo.py) reads
DATA_DIR       := $(RUN)/distilled
FINETUNE_DIR   := $(RUN)/sft-distilled
HF_DIR         := $(RUN)/hf-distilled
GENERATIONS    := $(RUN)/distilled_generations.jsonl

# The student: random init, with a tokenizer trained on the embedded corpus (a real task downloads one instead).
$(STUDENT)/lit_model.pth: artifacts/demo/corpus.txt | $(STAMP)
	$(LITGPT_EXT) make_tiny_checkpoint --out_dir $(STUDENT) --corpus $< --n_layer 2 --n_embd 128 --n_head 4
