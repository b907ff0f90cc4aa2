"""The two retrievers (addressvlm.training.retrieval_models): both train through `python -m xtuner.tools.train` on tiny
models, their checkpoints load as encoders that embed into one unit-norm space, CLIP reads past 77 tokens, and the loss
is InfoNCE as written down by hand."""
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from addressvlm.core.records import write_gallery, write_retrieval_queries
from addressvlm.training.recipes import load_recipe, local_run_options
from addressvlm.training.launcher import read_losses, train
from addressvlm.training.stage_chain import find_last_checkpoint

from conftest import COLOURS
from scripts import script

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "retrieval"


def write_retrieval_colour_city(root: Path) -> Path:
    """One satellite tile per colour (train and test), two street views of each in a lighter shade and a scene text
    naming the colour: a retriever has to match the shade and the word to the tile."""
    gallery, queries = [], []
    for split in ("train", "test"):
        for n, (name, rgb) in enumerate(COLOURS.items()):
            tile = f"{split}_{name}"
            image = f"retrieval/tiles/{tile}.png"
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), rgb).save(root / image)
            gallery.append({"tile": tile, "image": image, "lat": 60.0 + n / 100, "lon": 25.0, "street": f"{name} street",
                            "district": "colour district", "split": split})
            for view in range(2):
                shot = f"images/{tile}_{view}.jpg"
                (root / shot).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (80, 60), tuple(min(255, c + 20 * (view + 1)) for c in rgb)).save(root / shot)
                queries.append({"query_id": f"{tile}/sv{view}", "kind": "image", "tile": tile, "split": split,
                                "image": shot, "text": None, "source": "street_view"})
            queries.append({"query_id": f"{tile}/text", "kind": "text", "tile": tile, "split": split, "image": None,
                            "text": f"The colour is {name}.", "source": "rule"})
    write_gallery(root / "retrieval" / "gallery.jsonl", gallery)
    write_retrieval_queries(root / "retrieval" / "queries.jsonl", queries)
    return root


@pytest.fixture(scope="module")
def retrieval_city(tmp_path_factory) -> Path:
    return write_retrieval_colour_city(tmp_path_factory.mktemp("retrieval_city"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from addressvlm.standins.tiny_clip import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("models") / "clip-vit-large-patch14",
                          corpus=[f"The colour is {c}." for c in COLOURS] + ["a street, a park, a tram stop"] * 3)


def few_steps(city: Path, lr: float, epochs: int) -> dict:
    """12 train pairs, batch 4 -> 3 iterations an epoch, constant lr after a one-iteration warm-up."""
    return {"train_dataloader.dataset.data_root": str(city), "train_dataloader.batch_size": 4,
            "optim_wrapper.optimizer.lr": lr, "train_cfg.max_epochs": epochs,
            "param_scheduler.0.end": 1 / 3, "param_scheduler.1.begin": 1 / 3, "param_scheduler.1.end": epochs,
            "param_scheduler.1.eta_min": lr, "default_hooks.logger.interval": 1,
            "default_hooks.checkpoint.interval": 3 * epochs, "randomness.seed": 0}


LVLM_RUN = {"model.freeze_projector": False}
CLIP_RUN = {"model.text_positions": 120, "train_dataloader.dataset.inputs.max_text_tokens": 120}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, retrieval_city, tiny_llava, tiny_clip):
    """Each retriever trained once for the module, the two runs side by side on one thread each."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("retrieval_work")
    runs = {"lvlm": (RECIPES / "lvlm_pitts.py", tiny_llava, {**few_steps(retrieval_city, 1e-3, 4), **LVLM_RUN}),
            "clip": (RECIPES / "clip_pitts.py", tiny_clip, {**few_steps(retrieval_city, 1e-3, 4), **CLIP_RUN})}
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(runs, pool.map(lambda item: train(str(item[1][0]), root / item[0], str(item[1][1]),
                                                          overrides=item[1][2], threads=1), runs.items())))
    return {name: {"work_dir": done[name], "recipe": str(runs[name][0]), "model_root": runs[name][1],
                   "overrides": runs[name][2]} for name in runs}


def mean(values):
    return sum(values) / len(values)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lvlm", "clip"])
def test_both_retrievers_train_and_their_loss_falls(trained, name):
    losses = [loss for _, loss in sorted(read_losses(trained[name]["work_dir"]).items())]
    assert len(losses) == 12
    assert mean(losses[-3:]) < mean(losses[:3]) - 0.05, losses  # LVLM seed 0: 1.366 -> 1.252
    saved = torch.load(find_last_checkpoint(trained[name]["work_dir"]), map_location="cpu",
                       weights_only=False)["state_dict"]
    assert "contrastive.logit_scale" in saved
    if name == "lvlm":
        assert any("lora_A" in k for k in saved) and not any("lora_" not in k and k.startswith("llm.") for k in saved)
    else:  # the whole CLIP fine-tunes: both towers moved from the pretrained weights
        from transformers import CLIPModel

        pretrained = CLIPModel.from_pretrained(trained[name]["model_root"]).state_dict()
        for tower in ("vision_model.", "text_model.encoder."):
            assert any(not torch.equal(v, pretrained[k[len("clip."):]]) for k, v in saved.items()
                       if k.startswith("clip." + tower)), tower


def encoder_of(run: dict):
    from addressvlm.answering.retrieval_encoders import load_encoder

    options = local_run_options(run["recipe"], str(run["model_root"]), overrides=run["overrides"])
    return load_encoder(run["recipe"], str(run["work_dir"]), options, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name,dim", [("lvlm", 64), ("clip", 32)])
def test_a_trained_checkpoint_loads_as_an_encoder_of_unit_embeddings(trained, retrieval_city, name, dim):
    encoder = encoder_of(trained[name])
    tiles = sorted((retrieval_city / "retrieval" / "tiles").glob("test_*.png"))
    views = sorted((retrieval_city / "images").glob("test_*.jpg"))
    gallery = encoder.embed_images(tiles, role="gallery", batch_size=3)
    queries = encoder.embed_images(views, role="query")
    texts = encoder.embed_texts([f"The colour is {c}." for c in COLOURS])
    for matrix, rows in ((gallery, len(tiles)), (queries, len(views)), (texts, len(COLOURS))):
        assert matrix.shape == (rows, dim) and matrix.dtype == torch.float32 and matrix.device.type == "cpu"
        assert torch.allclose(matrix.norm(dim=1), torch.ones(rows), atol=1e-5)
    # Every trained tensor came from the checkpoint, and training moved them (peft starts every LoRA B at zero).
    saved = torch.load(find_last_checkpoint(trained[name]["work_dir"]), map_location="cpu",
                       weights_only=False)["state_dict"]
    state = encoder.model.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    if name == "lvlm":
        assert any(torch.count_nonzero(v) for k, v in saved.items() if ".lora_B." in k)
    assert encoder.name == {"lvlm": "lvlm_last_token", "clip": "clip_dual_encoder"}[name]


def test_info_nce_equals_the_hand_computation():
    from addressvlm.training.retrieval_models import symmetric_info_nce

    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    p = torch.nn.functional.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    scale = 10.0
    sims = [[sum(a * b for a, b in zip(qi, pj)) for pj in p.tolist()] for qi in q.tolist()]

    def cross_entropy(rows):
        return mean([math.log(sum(math.exp(scale * s) for s in row)) - scale * row[i] for i, row in enumerate(rows)])

    by_hand = (cross_entropy(sims) + cross_entropy([list(col) for col in zip(*sims)])) / 2
    got = symmetric_info_nce(q, p, torch.tensor(math.log(scale)), torch.tensor([0, 1, 2]))
    assert got.item() == pytest.approx(by_hand, rel=1e-6)
    # Pairs 0 and 2 share a tile: neither is the other's negative, so their columns leave the softmax.
    sims_shared = [[s if not {i, j} == {0, 2} else -math.inf for j, s in enumerate(row)] for i, row in enumerate(sims)]
    by_hand_shared = (cross_entropy(sims_shared) + cross_entropy([list(c) for c in zip(*sims_shared)])) / 2
    got_shared = symmetric_info_nce(q, p, torch.tensor(math.log(scale)), torch.tensor([5, 1, 5]))
    assert got_shared.item() == pytest.approx(by_hand_shared, rel=1e-6)


def test_clip_reads_long_texts_past_77_tokens_and_keeps_its_pretrained_positions(tiny_clip):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from addressvlm.training.retrieval_dataset import CLIPRetrievalInputs, collate_inputs
    from addressvlm.training.retrieval_models import CLIPDualEncoder

    pretrained = CLIPModel.from_pretrained(tiny_clip).text_model.embeddings.position_embedding.weight.detach().clone()
    model = CLIPDualEncoder(CLIPModel.from_pretrained(tiny_clip), text_positions=300).eval()
    table = model.clip.text_model.embeddings.position_embedding.weight
    assert table.shape == (300, pretrained.shape[1])
    assert torch.equal(table[:77], pretrained)
    assert table.requires_grad

    inputs = CLIPRetrievalInputs(AutoTokenizer.from_pretrained(tiny_clip), CLIPImageProcessor.from_pretrained(tiny_clip),
                                 max_text_tokens=300)
    words = "a street, a park, a tram stop " * 30
    long_text, changed_tail = words + "The colour is red.", words + "The colour is blue."
    ids = inputs.text(long_text)["input_ids"]
    assert 150 < len(ids) <= 300 and ids[-1] == inputs.tokenizer.eos_token_id  # whole, not cut at 77
    with torch.no_grad():
        embedded = model.embed(collate_inputs([inputs.text(long_text), inputs.text(changed_tail)]))
    # Only the words after position 77 differ, and the embeddings do: the tail is read.
    assert not torch.allclose(embedded[0], embedded[1], atol=1e-4)


def test_the_memory_bank_adds_earlier_pairs_as_negatives_but_never_a_pairs_own_tile():
    from addressvlm.training.retrieval_models import ContrastiveHead, symmetric_info_nce

    torch.manual_seed(0)
    head = ContrastiveHead(temperature=0.1, bank_size=3, dim=4)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, 4), dim=1)  # noqa: E731
    q1, p1, q2, p2 = unit(2), unit(2), unit(2), unit(2)
    head(q1, p1, torch.tensor([0, 1]))
    assert head.bank_tiles.tolist() == [0, 1]
    got = head(q2, p2, torch.tensor([1, 2]))
    # Tile 1 is in the bank from the first batch: masked for the new tile-1 pair, a negative for the tile-2 pair.
    expected = symmetric_info_nce(q2, p2, torch.tensor(math.log(10.0)), torch.tensor([1, 2]), q1, p1,
                                  torch.tensor([0, 1]))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got.item() != pytest.approx(symmetric_info_nce(q2, p2, torch.tensor(math.log(10.0)),
                                                          torch.tensor([1, 2])).item(), rel=1e-3)
    assert head.bank_tiles.tolist() == [1, 2, 0]  # newest first, the oldest pair dropped
    head.eval()
    assert head(q2, p2, torch.tensor([1, 2])).item() == pytest.approx(
        symmetric_info_nce(q2, p2, torch.tensor(math.log(10.0)), torch.tensor([1, 2])).item(), rel=1e-6)


def test_last_token_and_mean_pooling_read_only_real_tokens():
    from addressvlm.training.retrieval_models import pool_hidden

    hidden = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second row is right-padded
    assert pool_hidden(hidden, mask, "last").tolist() == [[4.0, 5.0], [8.0, 9.0]]
    assert pool_hidden(hidden, mask, "mean").tolist() == [[2.0, 3.0], [7.0, 8.0]]


@pytest.mark.parametrize("recipe,model_type,pooling,data_root", [
    ("lvlm_pitts.py", "LVLMRetriever", "last", "./data/pitts/"),
    ("lvlm_mean_pooling_pitts.py", "LVLMRetriever", "mean", "./data/pitts/"),
    ("lvlm_helsinki.py", "LVLMRetriever", "last", "./data/helsinki/"),
    ("clip_pitts.py", "CLIPDualEncoder", None, "./data/pitts/"),
    ("clip_helsinki.py", "CLIPDualEncoder", None, "./data/helsinki/"),
])
def test_the_retrieval_recipes_name_their_model_city_and_work_dir(recipe, model_type, pooling, data_root):

    cfg = load_recipe(str(RECIPES / recipe))
    assert cfg.model.type.__name__ == model_type and cfg.model.get("pooling") == pooling
    assert cfg.train_dataloader.dataset.data_root == data_root
    assert cfg.work_dir == "./work_dirs/retrieval/" + recipe[:-3]


def test_the_pair_dataset_refuses_missing_files_unknown_kinds_and_an_empty_split(tmp_path, retrieval_city):
    from addressvlm.training.inputs import MissingInputError
    from addressvlm.core.records import DataError
    from addressvlm.training.retrieval_dataset import RetrievalPairDataset

    with pytest.raises(MissingInputError, match=r"gallery.jsonl not found.*build_retrieval.py"):
        RetrievalPairDataset(str(tmp_path), inputs=None)
    with pytest.raises(ValueError, match="query_kinds"):
        RetrievalPairDataset(str(retrieval_city), inputs=None, query_kinds=["audio"])
    with pytest.raises(DataError, match="no image/text queries in split 'val'"):
        RetrievalPairDataset(str(retrieval_city), inputs=None, split="val")
    pairs = RetrievalPairDataset(str(retrieval_city), inputs=None, query_kinds=["text"])
    assert len(pairs) == len(COLOURS) and all(q["kind"] == "text" for q in pairs.queries)


@pytest.mark.parametrize("name,recipe,dim", [("lvlm", "lvlm_pitts.py", 64), ("clip", "clip_pitts.py", 32)])
def test_gallery_embedding_timed_batched_and_one_at_a_time_gives_the_same_embeddings(
        retrieval_city, tiny_llava, tiny_clip, name, recipe, dim):
    from addressvlm.answering.retrieval_encoders import load_encoder, time_gallery_embedding

    recipe = str(RECIPES / recipe)
    options = local_run_options(recipe, str(tiny_llava if name == "lvlm" else tiny_clip),
                                overrides=CLIP_RUN if name == "clip" else {})
    encoder = load_encoder(recipe, None, options, device="cpu")
    # Eight tiles of distinct colours in batches of 3 (a short last batch): a batch that mixed up its rows' images
    # or attention would embed a tile unlike the same tile alone.
    tiles = sorted((retrieval_city / "retrieval" / "tiles").glob("*.png"))
    result = time_gallery_embedding(encoder, tiles, batch_size=3, rounds=1)
    assert (result["tiles"], result["batch_size"], result["embedding_dim"], result["dtype"]) == (8, 3, dim, "float32")
    assert result["max_abs_difference"] < 1e-5
    for way in ("batched", "one_at_a_time"):
        figures = result[way]
        assert figures["tiles_per_s"] == pytest.approx(8 / figures["seconds"], rel=0.01)
        assert figures["projected_seconds"]["100000"] == pytest.approx(100_000 / figures["tiles_per_s"], rel=0.01)
    assert result["batched_over_one_at_a_time"] == pytest.approx(
        result["batched"]["tiles_per_s"] / result["one_at_a_time"]["tiles_per_s"], rel=0.01)
    assert encoder.embed_images(tiles[:2], role="gallery").std(dim=0).max() > 1e-3  # the tiles do differ


def test_eval_retrieve_as_the_readme_writes_it_names_what_is_missing(retrieval_city, tiny_clip, tiny_llava, tmp_path,
                                                                      monkeypatch):
    """eval/retrieve.py without the release where the recipe says, with --model-root, and with another model's
    checkpoint: one line each (transformers' "Incorrect path_or_model_id", a traceback listing 40 keys before)."""
    main = script("eval/retrieve.py").main
    from helpers import model_options, write_synthetic_checkpoint

    clip = str(RECIPES / "clip_pitts.py")
    common = ["--root", str(retrieval_city), "--out", str(tmp_path / "out"), "--figure-queries", "0"]
    monkeypatch.chdir(tmp_path)  # where no ./models/ is
    with pytest.raises(SystemExit, match=r"^error: model folder \./models/clip-vit-large-patch14 not found: download "
                                         r"openai/clip-vit-large-patch14 first"):
        main([*common, "--config", clip])
    with pytest.raises(SystemExit, match=r"^error: checkpoint work_dirs/retrieval/clip_pitts not found \(an iter_N"):
        main([*common, "--config", clip, "--checkpoint", "work_dirs/retrieval/clip_pitts"])
    with pytest.raises(SystemExit, match=r"^error: model folder \./models/llava-phi-3-mini-xtuner.* not found"):
        main([*common, "--config", str(RECIPES / "lvlm_pitts.py")])
    on_tiny = ["--config", clip, "--model-root", str(tiny_clip), "--cfg-options",
               *(f"{key}={value}" for key, value in CLIP_RUN.items())]
    main([*common, *on_tiny])  # the untrained encoder: the release where --model-root says
    assert (tmp_path / "out" / "metrics.json").is_file()
    stage2 = write_synthetic_checkpoint(tmp_path / "stage2", model_options(tiny_llava))
    with pytest.raises(SystemExit) as refused:
        main([*common, *on_tiny, "--checkpoint", str(stage2)])
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"error: {stage2} does not fit the model its recipe builds")
    assert "in the checkpoint but not in this model: ['llm." in message
    with pytest.raises(SystemExit, match=r"recipes/stage2_pitts\.py builds AddressLLaVAModel, not a retriever"):
        main([*common, "--config", str(RECIPES.parent / "stage2_pitts.py")])
