"""``litgpt-ext finetune_kd``: logit distillation — the student learns the teacher's token distribution at the answer
positions (forward KL, reverse KL or the generalized JSD of GKD), from a local litgpt teacher or stored top-k
log-probs, on the one training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.data import DataModule

from litgpt_ext.api.prompt_scores import ServerArgs
from litgpt_ext.checks import within
from litgpt_ext.errors import UserError
from litgpt_ext.finetune.fabric import check_strategy
from litgpt_ext.finetune.flags import CommonFlags, finetune_command
from litgpt_ext.finetune.launch import run, start
from litgpt_ext.generate.on_model import ON_POLICY
from litgpt_ext.generate.settings import Sampling
from litgpt_ext.kd.cross_teacher import check_cross, cross_teacher
from litgpt_ext.kd.teacher import TeacherChoice, make_teacher
from litgpt_ext.kd.teachers import NamedTeacher, objective_parts, routed_teachers
from litgpt_ext.training.args import TrainArgs
from litgpt_ext.training.objectives.cross_tokenizer import CrossSettings, CrossTokenizerKD
from litgpt_ext.training.objectives.divergences import DIVERGENCES
from litgpt_ext.training.objectives.kd import KDObjective, KDSettings
from litgpt_ext.training.objectives.routed_kd import RoutedKD
from litgpt_ext.training.onpolicy import OnPolicy


def check_kd_numbers(
    beta: float, temperature: float, kd_ratio: float, divergence: str = "gjsd", skew_alpha=0.1, akl_mu=0.5
) -> None:
    within("beta", beta, 0.0, 1.0)
    within("kd_ratio", kd_ratio, 0.0, 1.0)
    if not temperature > 0:
        raise UserError(f"must be > 0, got {temperature}", field="temperature")
    if divergence not in DIVERGENCES:
        raise UserError(f"must be one of {', '.join(DIVERGENCES)}, got {divergence!r}", field="divergence")
    if divergence != "gjsd" and beta != 0:
        raise UserError(f"chooses within --divergence gjsd only (got --divergence {divergence})", field="beta")
    if not 0 < skew_alpha < 1:
        raise UserError(f"must be in (0, 1), got {skew_alpha}", field="skew_alpha")
    within("akl_mu", akl_mu, 0.0, 1.0, low_open=True)


def check_onpolicy(policy: OnPolicy, choice: TeacherChoice) -> None:
    from litgpt_ext.checks import above, at_least

    within("lmbda", policy.lmbda, 0.0, 1.0)
    policy.gen.check("gen.", max_temperature=2.0)
    server = choice.server
    at_least("server.top_k", server.top_k, 1)
    at_least("server.concurrency", server.concurrency, 1)
    at_least("server.rpm", server.rpm, 1)
    at_least("server.max_attempts", server.max_attempts, 1)
    above("server.timeout", server.timeout, 0)
    if policy.seq_kd and choice.checkpoint is None:
        raise UserError("--seq_kd samples answers from the teacher: it needs a local --teacher DIR", field="seq_kd")
    if policy.lmbda > 0 and choice.checkpoint is None and choice.url is None:
        raise UserError(
            "on-policy samples need a teacher that can score them: --teacher DIR or --teacher_url URL (stored "
            "log-probs cover only the data's own answers)",
            field="lmbda",
        )


@finetune_command()
def setup(
    checkpoint_dir: Path,
    data: DataModule | Path | None = None,
    out_dir: Path = Path("out/finetune/kd"),
    teacher: Path | None = None,
    teacher_logprobs: Path | None = None,
    teacher_precision: Literal["bf16-true", "16-true", "32-true"] | None = None,
    beta: float = 0.0,
    temperature: float = 1.0,
    kd_ratio: float = 0.5,
    scale_by_t2: bool = True,
    topk_tail: bool = True,
    divergence: Literal["gjsd", "skew_kl", "skew_rkl", "akl"] = "gjsd",
    skew_alpha: float = 0.1,
    akl_mu: float = 0.5,
    cross_tokenizer: Literal["uld", "align"] | None = None,
    cross_shared_weight: float | None = None,
    lmbda: float = 0.0,
    seq_kd: bool = False,
    gen: Sampling = ON_POLICY,
    teacher_url: str | None = None,
    teacher_model: str | None = None,
    server: ServerArgs = ServerArgs(),
    teachers: list[NamedTeacher] | None = None,
    unrouted: Literal["ce", "refuse"] = "ce",
    mode: Literal["lora", "full"] = "lora",
    flags: CommonFlags = CommonFlags(),
) -> None:
    """Logit distillation: train a student on a teacher's next-token distributions at the answer positions.

    ``loss = (1 - kd_ratio) * CE(labels) + kd_ratio * temperature**2 * D(teacher, student)`` per answer token, with
    D chosen by ``--beta`` as in TRL's GKD, or by ``--divergence`` (skew KL, skew reverse KL, adaptive KL). The teacher is a litgpt checkpoint run frozen beside the student
    (``--teacher``) or its stored top-k log-probs (``--teacher_logprobs``, from distill_logprobs). Metrics: kd_loss,
    ce_loss, kl_teacher_student, top1_agreement (train and val_), teacher_ce (val).

    Arguments:
        checkpoint_dir: The base model's litgpt checkpoint directory.
        data: What finetune_sft takes: a path (litgpt JSON/JSONL file, Q/A JSON file, a distill_convert directory with
            train.json+val.json, or train.pt+val.pt) or a DataModule (``SFTData``, or litgpt's ``JSON``, ...). The
            loss is on its answer positions.
        out_dir: Directory for step-*/best/final checkpoints, logs, metrics.jsonl, loss.png, kd.png, kd_metadata.json.
        teacher: A litgpt checkpoint of the teacher, run frozen in this process (online distillation). Its tokenizer
            must map the student's tokens to the same ids (a larger, padded vocabulary is fine), unless
            --cross_tokenizer is given.
        teacher_logprobs: Instead of --teacher: a distill_logprobs output (stored top-k of the teacher), made from the
            same data, tokenizer and --train.max_seq_length (checked at start).
        teacher_precision: The online teacher's precision (default: the run's --precision).
        beta: The divergence, as TRL's GKD defines it: 0 = forward KL(teacher||student), 1 = reverse
            KL(student||teacher), in between the generalized Jensen-Shannon divergence with that mixture weight.
        temperature: Softens both distributions (logits / temperature) in the divergence; the cross-entropy stays at 1.
        kd_ratio: alpha in loss = (1 - alpha) * CE(labels) + alpha * KD (torchtune's name); 1 is pure distillation.
        scale_by_t2: Multiply the divergence by temperature**2 (Hinton et al.) so gradients keep their size across
            temperatures; TRL's GKD does not.
        topk_tail: With --teacher_logprobs: compare the teacher's k tokens plus one bucket for the rest of each
            distribution's mass (TRL's loss_add_tail); false renormalises both over the k tokens.
        divergence: ``gjsd`` (GKD's family, chosen by --beta), ``skew_kl`` KL(teacher || a*teacher + (1-a)*student)
            or ``skew_rkl`` KL(student || a*student + (1-a)*teacher) (DistiLLM; a = --skew_alpha), or ``akl``
            (adaptive KL: forward and reverse KL weighted by the teacher-student gaps in the teacher's head and tail).
        skew_alpha: The skew divergences' mixture weight a, in (0, 1); 0.1 as in DistiLLM.
        akl_mu: AKL's head: the teacher's most likely tokens up to this cumulative probability (0.5 as in the paper).
        cross_tokenizer: Distil from a --teacher with another tokenizer: both read the same records (each in its own
            prompt style and tokens), aligned on the answer's byte offsets; ``uld`` compares each aligned span's
            sorted probabilities (Universal Logit Distillation), ``align`` compares the tokens the vocabularies
            share with --divergence / --beta and the rest as ULD (TRL's GOLD). Default: refuse another tokenizer.
        cross_shared_weight: ``--cross_tokenizer align``: the weight of the shared-token part (the rest gets 1 - it);
            default: the share of the teacher's vocabulary that the student shares, as GOLD.
        lmbda: On-policy share (GKD's lambda): the probability, per micro-batch, that its answers are replaced by the
            current student's own samples (drawn by generate_batch's engine with --gen.*) and scored by the teacher.
            0 = off-policy (the data's answers); 1 = always on-policy (with --beta 1, reverse KL, the usual choice).
            Needs --teacher or --teacher_url (stored log-probs cannot score new samples).
        seq_kd: Sequence-level KD: the micro-batches that are not on-policy train on the local teacher's own samples
            instead of the data's answers (TRL's seq_kd).
        gen: How on-policy / seq_kd answers are sampled (generate_batch's sampling flags): --gen.temperature (1
            here), --gen.top_k (none here), --gen.top_p, --gen.max_new_tokens (64 here), --gen.min_new_tokens,
            --gen.repetition_penalty, --gen.no_repeat_ngram_size, --gen.stop.
        teacher_url: Instead of --teacher: an OpenAI-compatible server (vLLM, SGLang) serving the teacher; every
            batch is scored there through /v1/completions with echo + logprobs (prompt sent as token ids). The
            server's model must share the student's tokenizer.
        teacher_model: The model name the --teacher_url server serves.
        server: The --teacher_url client: --server.top_k (20), --server.concurrency, --server.rpm,
            --server.timeout, --server.max_attempts (a server gone that long stops the run with a resumable
            checkpoint), --server.api_key_env.
        teachers: Several teachers in one run, instead of --teacher / --teacher_logprobs / --teacher_url: a list of
            ``{"name": ..., and one of "teacher", "teacher_logprobs", "teacher_url" (+ "teacher_model"), optional
            "teacher_precision"}``, each of the student's tokenizer, or ``{"name": ..., "mixture": {"a": 0.5, "b":
            0.5}}`` (the weighted average of listed local teachers). Each record is distilled from the teacher its
            --data.route_field names (each part of a batch through its own teacher, losses averaged by answer
            positions); metrics per teacher (kl_teacher_student_NAME, top1_agreement_NAME, records_NAME).
        unrouted: With --teachers, records whose route field is missing: ``ce`` (cross-entropy only) or ``refuse``.
        mode: ``lora`` (litgpt LoRA; final dir holds lit_model.pth.lora and the merged lit_model.pth) or ``full``.
    """
    job = start(setup, locals())
    check_kd_numbers(beta, temperature, kd_ratio, divergence, skew_alpha, akl_mu)
    kd = KDSettings(beta, temperature, kd_ratio, scale_by_t2, topk_tail, divergence, skew_alpha, akl_mu)
    if teachers is not None:
        if teacher or teacher_logprobs or teacher_url or cross_tokenizer or lmbda or seq_kd:
            raise UserError("names every teacher itself (another tokenizer's with its own \"cross_tokenizer\"): drop "
                            "--teacher / --teacher_logprobs / --teacher_url / --cross_tokenizer, and --lmbda / "
                            "--seq_kd (off-policy only, for now)", field="teachers")  # fmt: skip
        sources = routed_teachers(job.spec.checkpoint_dir, teachers, kd, server)

        def make_routed(tokenizer, train_args: TrainArgs) -> RoutedKD:
            parts = objective_parts(sources, kd, train_args.max_seq_length)
            return RoutedKD(parts, 0, train_args.max_seq_length, refuse_unrouted=unrouted == "refuse")

        run(job, make_routed)
        return
    choice = TeacherChoice(teacher, teacher_logprobs, teacher_url, teacher_model, teacher_precision, server)
    policy = OnPolicy(lmbda, seq_kd, gen, flags.seed)
    check_onpolicy(policy, choice)
    if policy.lmbda > 0:
        check_strategy(flags.strategy, on_policy=True)
    student = job.spec.checkpoint_dir
    if cross_tokenizer is not None:
        cross = CrossSettings(cross_tokenizer, cross_shared_weight)
        check_cross(cross, kd, choice, policy)
        chosen = cross_teacher(student, choice, kd, cross)
        run(job, lambda tokenizer, train_args: CrossTokenizerKD(chosen, kd, cross, 0, train_args.max_seq_length))
        return
    source = make_teacher(student, choice, kd)

    def make_objective(tokenizer, train_args: TrainArgs) -> KDObjective:
        from litgpt_ext.training.onpolicy import OnPolicySampler

        sampler = OnPolicySampler(policy, tokenizer) if policy.active else None
        return KDObjective(source, kd, pad_id=0, max_seq_length=train_args.max_seq_length, sampler=sampler)

    run(job, make_objective)


setup.default_data = "SFTData"
"""The DataModule a bare ``--data PATH`` means (the CLI turns ``--data PATH --data.x v`` into its long form)."""
