# The demo task on a tiny random-init student (a tokenizer trained on the embedded corpus): the whole pipeline in
# about a minute, the student the demo's other stages (DPO, reward models, KD) build on, and the task the tests run.
# `make demo` runs it after the real-student demo task with RESPONSES pointing at that task's cache, so the teacher
# answers nothing twice.
RUN            := artifacts/runs/demo/tiny
include artifacts/tasks/demo-common.mk
TOKENIZE_FLAGS := --max_seq_length 256 --prompt_style default
STUDENT        := $(RUN)/student
FINETUNE_CONFIG := artifacts/tasks/demo-tiny-finetune.yaml
GENERATE_FLAGS := --max_new_tokens 32 --temperature 0 --precision 32-true
BASELINE_FLAGS := --prompt_style default

# The student: random init, with a tokenizer trained on the embedded corpus (a real task downloads one instead).
$(STUDENT)/lit_model.pth: artifacts/demo/corpus.txt | $(STAMP)
	$(LITGPT_EXT) make_tiny_checkpoint --out_dir $(STUDENT) --corpus $< --n_layer 2 --n_embd 128 --n_head 4
