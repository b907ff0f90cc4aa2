"""Table 1's "two images input separately" (recipes/ablations/table1_two_images_stage*.py): the stage-1 tools' own
"separate" data trains through `python -m xtuner.tools.train` on the tiny model, both images of a sample reach the
LLM as two blocks of visual tokens in one sequence, and the normal stage 2 continues the run."""
from pathlib import Path

import pytest
import torch
from PIL import Image

from addressvlm.training.dataset import check_llava_inputs, multi_image_collate_fn
from addressvlm.geo.crop import crop_city
from addressvlm.data.graft import city_pairs, graft_batch
from addressvlm.data.stage1_json import build_stage1_json
from addressvlm.data.labels import make_labels
from addressvlm.core.records import DataError, read_llava_json, write_llava_json
from addressvlm.training.launcher import train
from addressvlm.training.stage_chain import find_last_checkpoint
from xtuner.utils import IMAGE_TOKEN_INDEX

from conftest import build_model, local_recipe
from helpers import make_street_view_city

ABLATIONS = Path(__file__).resolve().parent.parent / "recipes" / "ablations"
STAGE1 = str(ABLATIONS / "table1_two_images_stage1.py")
STAGE2 = str(ABLATIONS / "table1_two_images_stage2.py")


def separate_city(root: Path) -> Path:
    """A small city through the stage-1 tools with the "separate" input: crops, satellite + street-view pairs,
    rule-backend labels for the two-image question, and stage1/train_separate.json (the recipe's data file)."""
    make_street_view_city(root, with_raster=True)
    crop_city(root, root / "stage1" / "crops", 120, 168, progress=False)
    graft_batch(city_pairs(root, root / "stage1" / "crops"), root / "stage1" / "separate", variant="separate",
                workers=1, progress=False)
    labels = root / "stage1" / "labels_separate.jsonl"
    make_labels(root, root / "stage1" / "separate", labels, "rule", city_name="Helsinki", variant="separate",
                progress=False)
    build_stage1_json(root, labels, root / "stage1" / "train_separate.json", variant="separate")
    return root


def on_city(city: Path) -> dict:
    return {"train_dataloader.dataset.data_path": str(city / "stage1" / "train_separate.json"),
            "train_dataloader.dataset.image_folder": str(city)}


# The city's 6 training views, batch 2: three iterations, the last at lr 1e-3 so trained tensors move visibly.
FEW_STEPS = {"train_dataloader.batch_size": 2, "train_dataloader.sampler.per_device_batch_size": 2,
             "optim_wrapper.accumulative_counts": 1, "optim_wrapper.optimizer.lr": 1e-3, "train_cfg.max_epochs": 1,
             "param_scheduler.0.end": 0.34, "param_scheduler.1.begin": 0.34, "param_scheduler.1.end": 1,
             "default_hooks.checkpoint.interval": 3, "randomness.seed": 0}


@pytest.fixture(scope="module")
def two_images(tmp_path_factory, tiny_llava):
    """The separate city, the recipe's dataset and untrained model, and its training run started in the background
    (mostly process start-up) while the module's other tests use them."""
    from concurrent.futures import ThreadPoolExecutor

    from xtuner.registry import BUILDER

    root = tmp_path_factory.mktemp("table1")
    city = separate_city(root / "helsinki")
    with ThreadPoolExecutor(max_workers=1) as pool:
        training = pool.submit(train, STAGE1, root / "work" / "stage1", str(tiny_llava),
                               overrides={**on_city(city), **FEW_STEPS}, threads=1)
        cfg = local_recipe(STAGE1, tiny_llava, on_city(city))
        yield {"city": city, "model_root": tiny_llava, "cfg": cfg, "training": training,
               "dataset": BUILDER.build(cfg.train_dataloader.dataset),
               "model": build_model(STAGE1, tiny_llava, on_city(city)).eval()}  # untrained: the release's tensors


def collate(cfg, items):
    options = dict(cfg.train_dataloader.collate_fn)
    return options.pop("type")(items, **options)["data"]


def test_the_separate_data_is_two_images_per_sample(two_images):
    records = read_llava_json(two_images["city"] / "stage1" / "train_separate.json")
    assert len(records) == 6 and all(len(r["image"]) == 2 for r in records)
    assert records[0]["image"][0].endswith(".satellite.jpg") and records[0]["image"][1].endswith(".street.jpg")
    item = two_images["dataset"][0]
    assert item["pixel_values"].shape[0] == 2
    positions = [i for i, token in enumerate(item["input_ids"]) if token == IMAGE_TOKEN_INDEX]
    assert len(positions) == 2 and item["length"] == len(item["input_ids"])
    # The two image positions are joined by the line break that follows each <image> in the record.
    from xtuner.registry import BUILDER

    tokenizer = BUILDER.build(two_images["cfg"].tokenizer)
    assert item["input_ids"][positions[0] + 1:positions[1]] == tokenizer.encode("\n", add_special_tokens=False)


@pytest.mark.slow
def test_both_images_reach_the_llm_as_two_blocks(two_images):
    """The embedded sequence holds each sample's satellite and street-view tokens, in order, where its two image
    positions were: 2 x tokens-per-image rows, equal to the projector's output for that sample's images."""
    model, dataset = two_images["model"], two_images["dataset"]
    batch = collate(two_images["cfg"], [dataset[0], dataset[1]])
    assert batch["pixel_values"].shape[0] == 4  # two samples x two images, in sample order
    captured = {}
    hooks = [model.projector.register_forward_hook(lambda module, args, out: captured.update(images=out.detach())),
             model.llm.register_forward_pre_hook(
                 lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"].detach(),
                                                              mask=kwargs["attention_mask"]), with_kwargs=True)]
    with torch.no_grad():
        model(dict(batch), mode="loss")
    for hook in hooks:
        hook.remove()
    images, embeds = captured["images"], captured["embeds"]
    per_image = images.shape[1]
    assert per_image == (56 // 14) ** 2  # the tiny CLIP's 56 px at patch 14; 576 at the release's 336 px
    for sample in range(2):
        ids = batch["input_ids"][sample][batch["attention_mask"][sample]].tolist()
        first, second = [i for i, token in enumerate(ids) if token == IMAGE_TOKEN_INDEX]
        # Each image position becomes per_image rows, so the second block starts per_image - 1 rows later.
        start2 = second + per_image - 1
        assert torch.equal(embeds[sample, first:first + per_image], images[2 * sample])
        assert torch.equal(embeds[sample, start2:start2 + per_image], images[2 * sample + 1])
        # The sequence the LLM reads: the text tokens, and 2 x per_image visual rows for the two image positions.
        assert int(captured["mask"][sample].sum()) == len(ids) - 2 + 2 * per_image


@pytest.mark.slow
def test_the_loss_depends_on_each_image(two_images):
    model, dataset = two_images["model"], two_images["dataset"]
    batch = collate(two_images["cfg"], [dataset[0]])
    other = dataset[3]["pixel_values"]

    def loss(pixel_values):
        with torch.no_grad():
            return model({**batch, "pixel_values": pixel_values}, mode="loss")["loss"].item()

    base = loss(batch["pixel_values"])
    assert loss(torch.stack([batch["pixel_values"][0], other[1]])) != pytest.approx(base, abs=1e-6)  # street view
    assert loss(torch.stack([other[0], batch["pixel_values"][1]])) != pytest.approx(base, abs=1e-6)  # satellite


@pytest.mark.slow
def test_it_trains_and_the_normal_stage2_continues_it(two_images):
    from addressvlm.training.model import is_chained_llava_tensor

    work_dir = two_images["training"].result()
    trained = torch.load(find_last_checkpoint(work_dir), map_location="cpu", weights_only=False)["state_dict"]
    release = two_images["model"].state_dict()
    chained = {k: v for k, v in trained.items() if is_chained_llava_tensor(k)}
    assert any(k.startswith("projector.") for k in chained) and any(".lora_B." in k for k in chained)
    moved = [k for k, v in chained.items() if not torch.equal(v, release[k].to(v.dtype))]
    assert any(k.startswith("projector.") for k in moved) and any(".lora_B." in k for k in moved)

    stage2 = build_model(STAGE2, two_images["model_root"], {"model.init_from_work_dir": str(work_dir)}).state_dict()
    for key, value in chained.items():
        assert torch.equal(stage2[key], value), key


def test_the_collate_refuses_items_whose_images_and_positions_differ(two_images):
    item = dict(two_images["dataset"][0])
    item["pixel_values"] = item["pixel_values"][:1]
    with pytest.raises(ValueError, match="batch item 0: 2 image positions but 1 images"):
        multi_image_collate_fn([item])


def test_image_lists_are_checked_against_their_tokens_and_files(tmp_path, two_images):
    record = {"id": "x/1/0", "image": ["a.jpg", "b.jpg"],
              "conversations": [{"from": "human", "value": "<image>\nWhere?"}, {"from": "gpt", "value": "Here."}]}
    with pytest.raises(DataError, match=r"x/1/0.*2 and 1"):
        write_llava_json(tmp_path / "bad.json", [record])
    record["conversations"][0]["value"] = "<image>\n<image>\nWhere?"
    write_llava_json(tmp_path / "two.json", [record])
    with pytest.raises(DataError, match=r"2 image\(s\) missing.*'a.jpg', 'b.jpg'"):
        check_llava_inputs(str(tmp_path / "two.json"), str(tmp_path))
    # A single-image file given to the two-image recipe stops at start, naming the file.
    single = dict(record, image="a.jpg", conversations=[{"from": "human", "value": "<image>\nWhere?"},
                                                        {"from": "gpt", "value": "Here."}])
    write_llava_json(tmp_path / "one.json", [single])
    Image.new("RGB", (32, 32)).save(tmp_path / "a.jpg")
    from xtuner.registry import BUILDER

    cfg = local_recipe(STAGE1, two_images["model_root"], {
        "train_dataloader.dataset.data_path": str(tmp_path / "one.json"),
        "train_dataloader.dataset.image_folder": str(tmp_path)})
    with pytest.raises(DataError, match=r"one.json.*x/1/0.*1 image\(s\).*list of 2"):
        BUILDER.build(cfg.train_dataloader.dataset)


def test_preflight_checks_the_two_image_recipe(two_images):
    """tools/preflight.py on the recipe: two image places per example, both images through one training step."""
    from addressvlm.checks.preflight import run_preflight

    lines = []
    figures = run_preflight(STAGE1, str(two_images["model_root"]), cfg_options=on_city(two_images["city"]),
                            report=lines.append)
    assert "2 record(s) of" in figures["sample"] and len(figures["losses"]) == 1
    assert any(line.startswith("ok  a checkpoint saves") for line in lines)
