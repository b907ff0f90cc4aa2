"""mmengine hooks the recipes add to XTuner's."""
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from mmengine.hooks import Hook

from addressvlm.answering.answering import answer_questions, chunk_questions, group_by_image
from addressvlm.answering.loading import answering_in_place
from addressvlm.answering.scoring import score
from addressvlm.core.records import read_predictions, read_questions
from addressvlm.training.xtuner_shims import RESUME_VARIABLE


class RNGStateHook(Hook):
    """Save the RNG states in every checkpoint and restore them on resume.

    mmengine restores weights, optimizer, scheduler and the sampler's seed, but not the generators LoRA dropout draws
    from, so a resumed run drifts from the uninterrupted one; with this hook it reproduces it exactly.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["rng_state"] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("rng_state")
        if state is None:
            return
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ResumeLoadHook(Hook):
    """Let a resume read the run's own checkpoint, and nothing else, without torch's ``weights_only`` check.

    torch >= 2.6 unpickles with ``weights_only=True``, which refuses what mmengine stores beside the weights (its
    message hub's ``HistoryBuffer``, whose statistics are bound methods, and numpy arrays), so ``--resume`` fails.
    Allowing those types would allow ``getattr`` on them for every ``torch.load`` of the process; instead the
    override is on only in a run that resumes (or ``load_from``s), until its checkpoint has loaded
    (``addressvlm.training.xtuner_shims`` turns it on for ``--resume``, which XTuner reads before any hook runs).
    """

    priority = "VERY_HIGH"

    def before_run(self, runner) -> None:
        if runner._resume or runner._load_from:
            os.environ.setdefault(RESUME_VARIABLE, "1")

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        os.environ.pop(RESUME_VARIABLE, None)

    def before_train(self, runner) -> None:
        os.environ.pop(RESUME_VARIABLE, None)


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Every submodule in eval mode inside, each back in the mode it had after (some may train while others do not)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def sample_images(questions: list[dict], images: int, seed: int) -> list[dict]:
    """The questions of ``images`` images drawn with ``seed``, in file order: whole images, so every level and type
    is asked as often as in the file and answering shares each image's prefix."""
    order = list(group_by_image(questions))
    chosen = set(random.Random(seed).sample(order, min(images, len(order))))
    return [q for q in questions if q["image"] in chosen]


ADDRESS_METRICS = ("A_d", "A_s", "A_sd")


class AddressMetricsHook(Hook):
    """Every ``interval`` training iterations, answer a fixed sample of the validation questions and log A_d, A_s and
    A_sd through the runner's visualizer (``vis_data/scalars.json``; TensorBoard with the recipes' backend).

    The answers are greedy, through ``infer.answer_questions`` (eval/infer.py's answering), and scored by
    ``scoring.score`` (eval/score.py's scorer), so the curve is the test metric on validation images. Each rank
    answers a share of the sample's images and the answers are gathered: the cost is divided by the world size, and
    no rank waits for another longer than one share takes (a rank-0-only answer would leave the others blocked in
    their next collective for the whole evaluation). Under ZeRO-3 the parameters are partitioned, every forward needs
    every rank and greedy answers stop after different numbers of steps on different ranks, so there the metrics
    turn themselves off with a warning, as they do when the questions file does not exist (stage 1 may run before
    the city's VQA is built).

    Args:
        questions: single-turn questions (``build_vqa``'s ``val_questions.jsonl``); a relative path is taken from
            the training dataset's ``image_folder`` (the city root), so a city's child recipe needs no patch.
        images: how many validation images (nine questions each) are answered at every evaluation.
        interval: training iterations between evaluations; 0 turns the metrics off (mmengine removes only its own
            default hooks by ``None``, so this is the switch: ``default_hooks.address_metrics.interval=0``).
        seed: draws the images, once for the run.
        max_new_tokens, batch_size: as eval/infer.py's options.
    """

    priority = "LOW"

    def __init__(self, questions: str, images: int, interval: int, seed: int = 0, max_new_tokens: int = 32,
                 batch_size: int = 18):
        if images < 1 or interval < 0:
            raise ValueError(f"address metrics need images >= 1 and interval >= 0 (0: off), not {images} and "
                             f"{interval}")
        self.questions, self.images, self.interval, self.seed = questions, images, interval, seed
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.sample: list[dict] = []

    def before_train(self, runner) -> None:
        from mmengine.dist import get_dist_info

        if self.interval == 0:
            return
        self.image_folder = Path(runner.cfg.train_dataloader.dataset.image_folder)
        path = self.image_folder / self.questions
        model = unwrap_model(runner.model)
        if not path.is_file():
            runner.logger.warning(f"address metrics off: {path} not found (datasets_prep/build_vqa.py writes it)")
            return
        if any(hasattr(p, "ds_tensor") for p in model.parameters()):
            runner.logger.warning("address metrics off: ZeRO-3 partitions the parameters, so no rank can answer "
                                  "alone (use ZeRO-2, or answer checkpoints with eval/infer.py)")
            return
        self.sample = sample_images(read_questions(path), self.images, self.seed)
        rank, world_size = get_dist_info()
        self.share = chunk_questions(self.sample, world_size, rank)
        self.answerer = answering_in_place(runner.cfg, model)
        self.out_dir = Path(runner.log_dir) / "address_metrics"
        self.rank = rank
        runner.logger.info(f"address metrics every {self.interval} iterations on {len(self.sample)} questions of "
                           f"{path}")

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.sample and self.every_n_train_iters(runner, self.interval):
            self.evaluate(runner)

    def evaluate(self, runner) -> dict:
        """Answer and score the sample now; log the metrics at the iteration just trained and return them."""
        from mmengine.dist import all_gather_object

        step = runner.iter + 1
        start = time.perf_counter()
        out = self.out_dir / f"iter_{step}.rank{self.rank}.jsonl"  # this rank's answers, kept to read
        # optim_context: the autocast training runs its forward in (the trained fp32 tensors meet bf16 frozen ones).
        with eval_mode(unwrap_model(runner.model)), torch.no_grad(), runner.optim_wrapper.optim_context(runner.model):
            answer_questions(self.answerer, self.share, out, image_folder=self.image_folder,
                             batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, progress=False)
        answers = {qid: prediction for qid, (_, prediction) in read_predictions(out).items()}
        predictions = {qid: p for share in all_gather_object(answers) for qid, p in share.items()}
        metrics = score(self.sample, predictions)
        seconds = time.perf_counter() - start
        scalars = {f"address/{name}": metrics[name] for name in ADDRESS_METRICS if metrics[name] is not None}
        runner.visualizer.add_scalars({**scalars, "address/seconds": seconds}, step=step)
        runner.logger.info(f"address metrics at iteration {step} ({len(self.sample)} val questions, {seconds:.1f} s): "
                           + ", ".join(f"{name} {value}" for name, value in scalars.items()))
        return metrics


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The recipe's model inside DDP or mmengine's DeepSpeed wrapper (whose ``module`` is the engine's)."""
    from mmengine.model import is_model_wrapper

    return model.module if is_model_wrapper(model) else model
