"""A reading warm-up for the tiny LLM: the stand-in for the language pre-training a real LVLM arrives with.

The released LLaVA-Phi3-mini can already answer "Is this image taken in Kamppi, Yes or No?" or pick "(B)" about
something it recognises: it compares two names and reads an option's letter. A random tiny LLM cannot, and with its
weights frozen under the recipes' LoRA it did not learn to in the minutes a CPU gives: on the demo city its
judgment and choice answers stayed at guessing (docs/experiments.md, "reading warm-up"). So before any recipe runs,
the whole tiny LLM trains on text-only conversations in the stage-2 question forms (Tables B4/B5), where the image's
place holds a passage of random tokens with a street name and a district name in it. Street and district are paired at
random, so the LLM learns to read and compare the city's names, never which street lies in which district or what
any place looks like: which name fits an image is still learned from the images, by stage 1 and stage 2.

Each conversation goes through the recipes' own pipeline (``llava_map_fn``, the phi3_chat template, ``encode_fn``),
so the warm-up sees exactly the token layout training and answering use, with the passage where the image goes.
"""
from __future__ import annotations

import copy
import json
import os
import queue
import random
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

from addressvlm.core import templates
from addressvlm.core.processes import die_with_parent
from addressvlm.core.records import read_locations, write_atomic
from addressvlm.data.vqa import IMAGE_TOKEN, level_qa

# A city has more streets than districts, and choosing among them is learned later: streets come up more often.
LEVEL_WEIGHTS = {"district": 2.0, "street": 3.0, "address": 0.5}
# Naming is learned in a few hundred steps, comparing in about a thousand, and choosing (finding the option the
# passage names, then reading its letter) is slower still, so the harder kinds come up more often.
QTYPE_WEIGHTS = {"generation": 1.0, "judgment": 2.0, "multiple_choice": 4.0}
KINDS = ("address/generation", *(f"{level}/{qtype}" for level in ("district", "street")
                                   for qtype in QTYPE_WEIGHTS))
RESULT_FILE = "reading_warmup.json"


@dataclass(frozen=True)
class ReadingWarmup:
    # Choosing among options is learned suddenly, after a plateau at guessing whose length depends on the seed and
    # on the float summation order of the CPU's kernels (docs/experiments.md, "A warm-up that stops on a
    # criterion"). A fixed step count made the demo a lottery; the warm-up instead trains until every question kind
    # reaches ``target`` % on a held-out probe at ``checks_in_a_row`` checks in a row (one check can pass on a lucky
    # draw), checked every ``check_every`` steps, and stops at ``max_steps`` whether or not it got there (the
    # result file says which).
    max_steps: int = 3000
    target: float = 80.0
    check_every: int = 100
    checks_in_a_row: int = 2
    probe_per_kind: int = 100
    # Choosing is learned sooner with 64 per step than with twice the steps of 32.
    batch_size: int = 64
    lr: float = 2e-3
    # Up to the image's token count: the passage stands where the image's tokens go.
    passage_tokens: int = 64
    seed: int = 0
    # Data-parallel workers of one thread each, their gradients summed every step, so a step is still one update
    # on ``batch_size`` examples: a model this small keeps one core busier than it keeps two, and two one-thread
    # workers took a step in about 0.6 of the time one two-thread process took (docs/experiments.md, "A warm-up in
    # two workers"). A fixed count, not the machine's cores, so the figures do not depend on the machine.
    processes: int = 2


@dataclass(frozen=True)
class CityNames:
    streets: tuple[str, ...]
    districts: tuple[str, ...]

    @classmethod
    def of(cls, rows) -> "CityNames":
        """The street and district names of ``locations.csv`` rows."""
        return cls(tuple(sorted({r.street for r in rows})), tuple(sorted({r.district for r in rows})))

    def level(self, level: str) -> tuple[str, ...]:
        return self.streets if level == "street" else self.districts


def reading_record(names: CityNames, rng: random.Random) -> tuple[dict, str, str, str]:
    """One single-turn LLaVA record about a random (street, district): (record, kind, street, district), where
    kind is "level/qtype" and the record's ``<image>`` is where the passage naming both will go."""
    street, district = rng.choice(names.streets), rng.choice(names.districts)
    level = rng.choices(list(LEVEL_WEIGHTS), list(LEVEL_WEIGHTS.values()))[0]
    if level == "address":
        qtype, question, answer = "generation", templates.ADDRESS_QUESTION, templates.address_answer(street, district)
    else:
        qtype = rng.choices(list(QTYPE_WEIGHTS), list(QTYPE_WEIGHTS.values()))[0]
        truth = street if level == "street" else district
        wrong = rng.sample([n for n in names.level(level) if n != truth], 3)
        question, answer, _ = level_qa(level, qtype, truth, wrong, rng)
    record = {"id": "reading", "image": "", "conversations": [
        {"from": "human", "value": IMAGE_TOKEN + "\n" + question}, {"from": "gpt", "value": answer}]}
    return record, f"{level}/{qtype}", street, district


class ReadingExamples:
    """Token ids and labels of reading conversations, in the recipes' own encoding."""

    def __init__(self, tokenizer, names: CityNames, passage_tokens: int, seed: int = 0):
        from xtuner.utils import PROMPT_TEMPLATE

        if len(names.streets) < 4 or len(names.districts) < 4:
            raise ValueError(f"a multiple choice needs 4 names per level; the city has {len(names.streets)} "
                             f"streets and {len(names.districts)} districts")
        self.tokenizer, self.names, self.passage_tokens, self.seed = tokenizer, names, passage_tokens, seed
        self.template = PROMPT_TEMPLATE.phi3_chat
        every = (*names.streets, *names.districts)
        # A name in running text follows a space, as in the questions, and a byte-level BPE spells " Kamppi" with
        # other tokens than the answer's "Kamppi": the passage uses the questions' spelling.
        self.name_ids = {n: tokenizer.encode(" " + n, add_special_tokens=False) for n in every}
        # Filler that never spells part of a name, so a name is read only where it was put.
        taken = {i for n in every for form in (n, " " + n) for i in tokenizer.encode(form, add_special_tokens=False)}
        taken |= set(tokenizer.all_special_ids)
        self.filler = [i for i in range(len(tokenizer)) if i not in taken]

    def passage(self, street: str, district: str, rng: random.Random, length: int) -> list[int]:
        ids = [rng.choice(self.filler) for _ in range(length)]
        for name in rng.sample([street, district], 2):
            at = rng.randint(0, len(ids))
            ids[at:at] = self.name_ids[name]
        return ids

    def encode(self, record: dict, passage: list[int]) -> tuple[list[int], list[int]]:
        from xtuner.dataset.map_fns import llava_map_fn, template_map_fn
        from xtuner.dataset.utils import encode_fn
        from xtuner.utils import IGNORE_INDEX, IMAGE_TOKEN_INDEX

        example = template_map_fn(llava_map_fn(copy.deepcopy(record)), self.template)
        encoded = encode_fn(example, self.tokenizer, max_length=10 ** 6, with_image_token=True)
        at = encoded["input_ids"].index(IMAGE_TOKEN_INDEX)
        ids = encoded["input_ids"][:at] + passage + encoded["input_ids"][at + 1:]
        labels = encoded["labels"][:at] + [IGNORE_INDEX] * len(passage) + encoded["labels"][at + 1:]
        return ids, labels

    def sample(self, rng: random.Random, full_length: bool = False) -> tuple[list[int], list[int], str]:
        """One example; passages are of any length up to ``passage_tokens`` (short ones make the names easy to
        find early on), or exactly that long with ``full_length``, as an image is."""
        record, kind, street, district = reading_record(self.names, rng)
        length = self.passage_tokens if full_length else rng.randint(0, self.passage_tokens)
        ids, labels = self.encode(record, self.passage(street, district, rng, length))
        return ids, labels, kind


def length_grouped_batches(examples: ReadingExamples, rng: random.Random, batch_size: int, steps: int,
                           pool: int = 8):
    """``steps`` batches of training examples. Examples are independent draws, so each ``pool`` batches' worth is
    sorted by length before it is cut into batches: a batch then pads to little more than its own lengths (the
    passages run from 0 to ``passage_tokens``), and the batches of a pool come in random order."""
    done = 0
    while done < steps:
        drawn = sorted((examples.sample(rng) for _ in range(batch_size * pool)), key=lambda e: len(e[0]))
        batches = [drawn[i:i + batch_size] for i in range(0, len(drawn), batch_size)]
        rng.shuffle(batches)
        for batch in batches[:steps - done]:
            yield batch
        done += min(pool, steps - done)


def answer_loss(model, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The causal-LM loss summed over the answer tokens, and their count (``model(..., labels=labels).loss`` is the
    one over the other), with the output layer applied at those positions only: a reading conversation's answer is
    a few of its tokens, and the logits of all the others were a sixth of a warm-up step's work."""
    from xtuner.utils import IGNORE_INDEX

    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][scored]).float()
    return torch.nn.functional.cross_entropy(logits, targets[scored], reduction="sum"), int(scored.sum())


def prefetched(batches: Iterable[list], pad_id: int, depth: int = 2) -> Iterator[tuple[torch.Tensor, ...]]:
    """``batches`` as padded tensors, drawn and encoded in a thread while the steps before them train: drawing and
    encoding a batch (the tokenizer's Python) took about a fifth of a step, and the step's kernels release the GIL.
    The order is ``batches``'s, so a seed gives the same steps however the two threads interleave."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def fill():
        try:
            for batch in batches:
                item = _batch(batch, pad_id)
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(done)
        except BaseException as error:  # raised again in the training thread, which would otherwise wait forever
            ready.put(error)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _batch(examples, pad_id: int):
    from xtuner.utils import IGNORE_INDEX

    width = max(len(ids) for ids, _, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y, _) in enumerate(examples):
        ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, labels, mask


def held_out(examples: ReadingExamples, per_kind: int, salt: str) -> list[tuple[list[int], int, str]]:
    """``per_kind`` full-length examples of every question kind, drawn apart from training (``salt`` names the
    set): (the tokens up to the answer, the answer's first token, the kind)."""
    from xtuner.utils import IGNORE_INDEX

    rng, drawn, counts = random.Random(f"reading-{salt}:{examples.seed}"), [], {}
    while len(counts) < len(KINDS) or min(counts.values()) < per_kind:
        ids, labels, kind = examples.sample(rng, full_length=True)
        if counts.get(kind, 0) < per_kind:
            first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
            drawn.append((ids[:first], labels[first], kind))
            counts[kind] = counts.get(kind, 0) + 1
    return drawn


@dataclass(frozen=True)
class Workers:
    """This process's place among the warm-up's data-parallel workers."""
    rank: int = 0
    world: int = 1

    def summed(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the workers, in place (every worker gets the same sum)."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor


@torch.no_grad()
def reading_accuracy(model, held: list[tuple[list[int], int, str]], pad_id: int, batch_size: int = 64,
                     workers: Workers = Workers()) -> dict[str, float]:
    """Per kind, the share of ``held`` examples whose answer's first token is the model's top token (batched,
    right-padded: a causal model's last real position does not see the padding). Each of ``workers`` answers its
    share of ``held``; all of them get the whole figures."""
    kinds = sorted({kind for _, _, kind in held})
    counts = torch.zeros(len(kinds), 2)  # hits, examples
    was_training = model.training
    model.eval()
    ordered = sorted(held, key=lambda e: len(e[0]))[workers.rank::workers.world]
    for i in range(0, len(ordered), batch_size):
        batch = ordered[i:i + batch_size]
        ids, _, mask = _batch([(prefix, prefix, kind) for prefix, _, kind in batch], pad_id)
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = hidden[torch.arange(len(batch)), mask.sum(1) - 1]
        for (_, answer, kind), top in zip(batch, model.lm_head(last).argmax(-1).tolist()):
            counts[kinds.index(kind)] += torch.tensor([float(top == answer), 1.0])
    model.train(was_training)
    hits, examples = workers.summed(counts).T.tolist()
    return {kind: round(100.0 * h / n, 1) for kind, h, n in zip(kinds, hits, examples)}


def answer_gradients(model, parameters: list[torch.nn.Parameter], ids: torch.Tensor, labels: torch.Tensor,
                     mask: torch.Tensor, workers: Workers = Workers()) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of the mean loss over the answer tokens of every worker's batch together, in ``parameters``'
    ``.grad`` on every worker: what one process computes on all the batches at once. Returns this worker's loss sum
    and the answer tokens of all."""
    loss_sum, count = answer_loss(model, ids, labels, mask)
    answer_tokens = workers.summed(torch.tensor(float(count)))
    for p in parameters:
        p.grad = None
    (loss_sum / answer_tokens).backward()
    if workers.world > 1:  # summed in one message
        flat = workers.summed(torch.cat([p.grad.reshape(-1) for p in parameters]))
        for p, summed in zip(parameters, flat.split([p.numel() for p in parameters])):
            p.grad.copy_(summed.view_as(p))
    return loss_sum.detach(), answer_tokens


def warm_up_reading(llm_dir: str | Path, names: CityNames, settings: ReadingWarmup = ReadingWarmup(),
                    eval_per_kind: int = 100, progress: bool = True) -> dict:
    """Train the LLM saved in ``llm_dir`` (all of it) on reading conversations until every question kind reaches
    ``settings.target`` on the probe at ``settings.checks_in_a_row`` checks in a row (or ``settings.max_steps``), and
    save it back, with ``reading_warmup.json``: the settings, the names, the steps taken, whether the target was
    reached, the probe's curve, and the accuracy per kind on a second held-out set that played no part in stopping. With
    ``settings.processes`` above 1 the steps are shared by that many worker processes of one thread each."""
    llm_dir = Path(llm_dir)
    if settings.batch_size % settings.processes:
        raise ValueError(f"the warm-up's batch of {settings.batch_size} does not split over {settings.processes} "
                         "workers")
    if settings.processes == 1:
        _warm_up(0, 1, None, os.getpid(), llm_dir, names, settings, eval_per_kind, progress)
    else:
        import torch.multiprocessing

        with tempfile.TemporaryDirectory() as meeting:
            torch.multiprocessing.spawn(
                _warm_up, nprocs=settings.processes, args=(settings.processes, Path(meeting) / "group", os.getpid(),
                                                           llm_dir, names, settings, eval_per_kind, progress))
    return read_warmup_result(llm_dir)


def _warm_up(rank: int, world: int, meeting: Path | None, parent: int, llm_dir: Path, names: CityNames,
             settings: ReadingWarmup, eval_per_kind: int, progress: bool) -> None:
    if world > 1:
        die_with_parent(parent)  # a killed demo must not leave its workers training on
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{meeting}", rank=rank, world_size=world)
    try:
        _train(Workers(rank, world), llm_dir, names, settings, eval_per_kind, progress and rank == 0)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train(workers: Workers, llm_dir: Path, names: CityNames, settings: ReadingWarmup, eval_per_kind: int,
           progress: bool) -> None:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir)
    examples = ReadingExamples(tokenizer, names, settings.passage_tokens, settings.seed)
    probe = held_out(examples, settings.probe_per_kind, "probe")
    # Each worker draws its own share of every batch from its own stream.
    rng = random.Random(f"reading:{settings.seed}:{workers.rank}")
    torch.manual_seed(settings.seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.0)
    warmup = max(1, settings.max_steps // 90)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: min(1.0, (t + 1) / warmup) * max(0.05, 1.0 - t / settings.max_steps))
    model.train()
    batches = prefetched(length_grouped_batches(examples, rng, settings.batch_size // workers.world,
                                                settings.max_steps), tokenizer.pad_token_id)
    bar = tqdm(batches, total=settings.max_steps, desc="reading warm-up", disable=not progress, mininterval=5)
    curve, reached, step, passed = [], False, 0, 0
    for step, (ids, labels, mask) in enumerate(bar, start=1):
        loss_sum, answer_tokens = answer_gradients(model, parameters, ids, labels, mask, workers)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if step % settings.check_every == 0 or step == settings.max_steps:
            loss = (workers.summed(loss_sum) / answer_tokens).item()
            accuracy = reading_accuracy(model, probe, tokenizer.pad_token_id, workers=workers)
            curve.append({"step": step, "loss": round(loss, 4), "accuracy": accuracy})
            weakest = min(accuracy, key=accuracy.get)
            bar.set_postfix(loss=f"{loss:.3f}", weakest=f"{weakest} {accuracy[weakest]:.0f}%", refresh=False)
            passed = passed + 1 if min(accuracy.values()) >= settings.target else 0
            if passed >= settings.checks_in_a_row:
                reached = True
                break
    bar.close()
    batches.close()
    accuracy = reading_accuracy(model, held_out(examples, eval_per_kind, "eval"), tokenizer.pad_token_id,
                                workers=workers)
    if workers.rank == 0:
        result = {"settings": asdict(settings), "names": asdict(names), "steps": step, "reached_target": reached,
                  "final_loss": curve[-1]["loss"], "curve": curve, "accuracy": accuracy}
        model.save_pretrained(llm_dir)
        write_atomic(llm_dir / RESULT_FILE, json.dumps(result, indent=2) + "\n")


def read_warmup_result(model_dir: str | Path) -> dict | None:
    """The ``reading_warmup.json`` that ``warm_up_reading`` wrote into ``model_dir``; None for a model that was not
    warmed up."""
    path = Path(model_dir) / RESULT_FILE
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    missing = sorted({"settings", "names", "steps", "reached_target", "final_loss", "accuracy"} - set(result))
    if missing:
        raise ValueError(f"{path}: not a reading warm-up result, it lacks {', '.join(missing)}")
    return result


def names_from_locations(paths: Sequence[str | Path]) -> CityNames:
    return CityNames.of([row for path in paths for row in read_locations(path)])
