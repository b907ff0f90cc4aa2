"""MiniCPM-V 2.6 recipes, dataset adapter and model wrapper, on a tiny stand-in loaded as remote code."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from addressvlm.training.recipes import load_recipe
from PIL import Image

from addressvlm.core.records import read_predictions, write_questions
from conftest import COLOURS, REPO, write_colour_city

RECIPES = REPO / "recipes" / "minicpmv26"
QUESTION = "<image>\nWhat colour is this image?"


def small_lora(rank: int = 4):
    from peft import LoraConfig

    return (LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
            LoraConfig(r=rank, lora_alpha=2 * rank))


def build_wrapper(model_path, rank=4, **kwargs):
    from addressvlm.training.minicpmv import AddressMiniCPMV

    llm_lora, vision_lora = small_lora(rank)
    return AddressMiniCPMV(str(model_path), llm_lora=llm_lora, visual_encoder_lora=vision_lora,
                           torch_dtype="float32", **kwargs)


@pytest.mark.parametrize("name", ["stage1_pitts", "stage2_pitts", "stage1_sf", "stage2_sf"])
def test_recipe_parses_with_table_a1_values(name):
    cfg = load_recipe(RECIPES / f"{name}.py")
    stage, city = name.split("_")
    assert cfg.work_dir == f"./work_dirs/minicpmv26/{name}"
    assert cfg.model.type.__name__ == "AddressMiniCPMV"
    assert cfg.model.model_path == cfg.model_root == "./models/MiniCPM-V-2_6"
    assert cfg.train_dataloader.batch_size == 4 and cfg.optim_wrapper.accumulative_counts == 16
    assert cfg.optim_wrapper.optimizer.lr == 1e-5 and tuple(cfg.optim_wrapper.optimizer.betas) == (0.9, 0.999)
    assert cfg.optim_wrapper.optimizer.weight_decay == 0 and cfg.warmup_ratio == 0.03
    assert cfg.param_scheduler[0].end == pytest.approx(0.03)
    assert cfg.max_length == 2048 and cfg.train_dataloader.dataset.max_length == 2048
    for lora in (cfg.model.llm_lora, cfg.model.visual_encoder_lora):
        assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (128, 256, 0.05)
    assert sorted(cfg.model.llm_lora.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    data_file = "stage1/train.json" if stage == "stage1" else "vqa/train.json"
    assert cfg.train_dataloader.dataset.data_path == f"./data/{city}/{data_file}"
    assert cfg.train_dataloader.dataset.image_folder == f"./data/{city}/"
    expected_start = None if stage == "stage1" else f"./work_dirs/minicpmv26/stage1_{city}"
    assert cfg.model.init_from_work_dir == expected_start
    header = (RECIPES / f"{name}.py").read_text().split("\nfrom ")[0]
    if city == "pitts":
        assert "openbmb/MiniCPM-V-2_6" in header
        assert f"xtuner train recipes/minicpmv26/{name}.py --deepspeed deepspeed_zero2" in header
    else:  # a short child: its header points at the recipe whose commands it shares
        assert f"recipes/minicpmv26/{stage}_pitts.py" in header


def test_local_run_options_relocate_model_root(tiny_minicpmv):
    from addressvlm.training.recipes import local_run_options

    options = local_run_options(str(RECIPES / "stage2_sf.py"), str(tiny_minicpmv))
    assert f"model.model_path={tiny_minicpmv}" in options
    assert f"train_dataloader.dataset.model_path={tiny_minicpmv}" in options
    assert f"train_dataloader.dataset.tokenizer.pretrained_model_name_or_path={tiny_minicpmv}" in options
    assert "model.torch_dtype=float32" in options and "optim_wrapper.type=OptimWrapper" in options


def test_slicing_follows_the_release_settings():
    from addressvlm.training.minicpmv_code.image_processing_minicpmv import ImageSettings, choose_grid, slice_image

    release = ImageSettings()  # 448 px, patch 14, up to 9 slices
    assert choose_grid((336, 336), release) is None  # stage-1 grafts: one view
    assert choose_grid((640, 480), release) == (2, 1)  # Pitts street views: source + 2 slices
    assert choose_grid((1600, 400), release) == (4, 1)
    assert choose_grid((640, 480), ImageSettings(max_slice_nums=1)) is None
    source, rows = slice_image(Image.new("RGB", (640, 480)), release)
    assert len(rows) == 1 and len(rows[0]) == 2
    for view in [source, *rows[0]]:
        assert view.width % 14 == 0 and view.height % 14 == 0
        assert view.width * view.height <= 1.3 * 448 * 448


def test_example_has_placeholders_bounds_and_answer_labels(tiny_minicpmv):
    from transformers import AutoTokenizer

    from addressvlm.training.minicpmv_dataset import IGNORE_INDEX, ImageSettings, encode_record, minicpmv_collate_fn

    tokenizer = AutoTokenizer.from_pretrained(tiny_minicpmv, trust_remote_code=True)
    settings = ImageSettings.from_model_dir(tiny_minicpmv)
    record = {"id": "x", "image": "x.jpg", "conversations": [
        {"from": "human", "value": QUESTION}, {"from": "gpt", "value": "The colour is red."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes"}]}
    image = Image.new("RGB", (64, 48), COLOURS["red"])
    example = encode_record(record, image, tokenizer, settings, max_length=2048)

    text = tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>assistant\nThe colour is red.<|im_end|>" in text
    slices = "<slice>" + "<unk>" * settings.query_num + "</slice>"
    placeholder = ("<image_id>0</image_id><image>" + "<unk>" * settings.query_num + "</image>"
                   + slices * 2 + "\n" + slices * 2)  # 64x48 at 28 px: a 2x2 grid
    assert f"<|im_start|>user\n{placeholder}\nWhat colour is this image?<|im_end|>" in text
    labelled = example["input_ids"][example["labels"] != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "The colour is red.<|im_end|>Yes<|im_end|>"

    assert len(example["pixel_values"]) == len(example["tgt_sizes"]) == len(example["image_bound"]) == 5
    unk = tokenizer.convert_tokens_to_ids("<unk>")
    for start, end in example["image_bound"].tolist():
        assert end - start == settings.query_num and (example["input_ids"][start:end] == unk).all()
    p, (rows, cols) = settings.patch_size, example["tgt_sizes"][0].tolist()  # patches side by side, row-major
    source = example["pixel_values"][0].reshape(3, p, rows, cols, p).permute(0, 2, 1, 3, 4).reshape(3, rows * p, -1)
    assert source.shape == (3, 28, 28)
    assert torch.allclose(source.mean(dim=(1, 2)), (torch.tensor(COLOURS["red"]) / 255 - 0.5) / 0.5, atol=0.02)

    batch = minicpmv_collate_fn([example, encode_record(record, image.resize((28, 28)), tokenizer, settings, 2048)])
    data = batch["data"]
    assert data["input_ids"].shape == data["labels"].shape == data["attention_mask"].shape
    short = int(data["attention_mask"][1].sum())
    assert short < data["input_ids"].shape[1] and (data["labels"][1, short:] == IGNORE_INDEX).all()
    assert len(data["pixel_values"][1]) == 1  # 28x28 at 28 px: not sliced


def test_folder_image_processor_is_the_prompts_slicing(tiny_minicpmv):
    """The image processor the folder ships, loaded as engines load it (auto_map, remote code), cuts and marks an
    image as the project's prompts do, in the calls vLLM makes on it."""
    from transformers import AutoImageProcessor

    from addressvlm.training.minicpmv_dataset import ImageSettings, encode_image

    processor = AutoImageProcessor.from_pretrained(tiny_minicpmv, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules.")
    settings = ImageSettings.from_model_dir(tiny_minicpmv)
    wide, small = Image.new("RGB", (64, 40), COLOURS["blue"]), Image.new("RGB", (20, 20), COLOURS["red"])
    out = processor([[wide, small], [small]], return_tensors="pt")
    for images, views, sizes, image_sizes in zip([[wide, small], [small]], out["pixel_values"], out["tgt_sizes"],
                                                 out["image_sizes"]):
        encoded = [encode_image(image, settings) for image in images]
        ours = [view for _, image_views, _ in encoded for view in image_views]
        assert len(views) == len(ours) and all(torch.equal(a, b) for a, b in zip(views, ours))
        assert torch.equal(sizes, torch.cat([grids for _, _, grids in encoded]))
        assert image_sizes.tolist() == [list(image.size) for image in images]
    assert processor.get_sliced_grid(wide.size) == (2, 2) and processor.get_sliced_grid(small.size) is None
    assert processor.get_slice_image_placeholder(wide.size, image_idx=3) == encode_image(wide, settings, 3)[0]
    assert processor.get_slice_image_placeholder(wide.size, max_slice_nums=1, use_image_id=False) == \
        "<image>" + "<unk>" * settings.query_num + "</image>"
    assert processor.image_feature_size == settings.query_num and processor.max_slice_nums == settings.max_slice_nums
    frames = processor([np.stack([np.asarray(wide)] * 2)])["pixel_values"][0]  # a video's frames, as vLLM passes them
    pictures = processor([[wide, wide]])["pixel_values"][0]
    assert len(frames) == len(pictures) == 10 and all(torch.equal(a, b) for a, b in zip(frames, pictures))


def test_stand_in_without_a_resampler_head_refused(tmp_path):
    """The release's resampler has hidden // 128 heads: a stand-in of hidden 64 would have none."""
    done = subprocess.run([sys.executable, "tools/make_tiny_minicpmv.py", str(tmp_path / "m"), "--hidden", "64"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and not (tmp_path / "m").exists()
    assert done.stderr.splitlines()[-1].endswith("error: hidden 64: MiniCPM-V's resampler has one head per 128 "
                                                 "channels, so hidden must be a multiple of 128")


def test_wrapper_trains_lora_and_resampler_only(tiny_minicpmv):
    model = build_wrapper(tiny_minicpmv)
    assert type(model.model).__module__.startswith("transformers_modules.")  # loaded as remote code
    assert type(model.model.llm).__name__ == "Qwen2ForCausalLM"
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(model.state_dict()) == trained
    assert any(".llm." in n and "o_proj.lora_A" in n for n in trained)
    assert not any(".llm." in n and "mlp" in n for n in trained)
    assert any(".vpm." in n and "fc1.lora_B" in n for n in trained)
    assert "model.resampler.query" in trained
    assert all("lora_" in n or n.startswith("model.resampler.") for n in trained)
    assert model.model.llm.model.gradient_checkpointing and model.model.vpm.encoder.gradient_checkpointing

    # Under gradient checkpointing every trained tensor still gets its gradient (lora_A's is zero at step 0, as
    # lora_B starts at zero).
    from addressvlm.training.minicpmv_dataset import encode_record, minicpmv_collate_fn

    record = {"conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "The colour is red."}]}
    example = encode_record(record, Image.new("RGB", (64, 48), COLOURS["red"]), model.tokenizer,
                            model.image_settings, 2048)
    model.train()
    loss = model(minicpmv_collate_fn([example])["data"])["loss"]
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    for part in (".llm.", ".vpm.", ".resampler."):
        assert any(part in n and g.abs().sum() > 0 and "lora_A" not in n for n, g in grads.items()), part


def test_stage_chain_is_checked(tiny_minicpmv, tmp_path):
    from addressvlm.training.stage_chain import StageChainError

    stage1 = build_wrapper(tiny_minicpmv)
    with torch.no_grad():
        for name, param in stage1.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    (tmp_path / "stage1").mkdir()
    torch.save({"state_dict": stage1.state_dict()}, tmp_path / "stage1" / "iter_3.pth")

    stage2 = build_wrapper(tiny_minicpmv, init_from_work_dir=str(tmp_path / "stage1"))
    for key, value in stage1.state_dict().items():
        assert torch.equal(stage2.state_dict()[key], value), key
    with pytest.raises(StageChainError, match="same LoRA rank"):
        build_wrapper(tiny_minicpmv, rank=8, init_from_work_dir=str(tmp_path / "stage1"))
    with pytest.raises(StageChainError, match="does not exist"):
        build_wrapper(tiny_minicpmv, init_from_work_dir=str(tmp_path / "no_stage"))
    with pytest.raises(StageChainError, match="init_from_work_dir"):
        build_wrapper(tiny_minicpmv, pretrained_pth=str(tmp_path / "stage1" / "iter_3.pth"))


@pytest.mark.slow
def test_two_stages_train_then_answer(tiny_minicpmv, tmp_path):
    """Both recipes through `python -m xtuner.tools.train`; stage 2 continues stage 1; the result answers."""
    from xtuner.registry import BUILDER

    from addressvlm.training.launcher import read_losses, train

    city = write_colour_city(tmp_path / "city")
    common = {"train_dataloader.batch_size": 2, "train_dataloader.sampler.per_device_batch_size": 2,
              "optim_wrapper.accumulative_counts": 1, "optim_wrapper.optimizer.lr": 3e-3,
              "train_cfg.max_epochs": 3, "param_scheduler.0.end": 0.25, "param_scheduler.1.begin": 0.25,
              "param_scheduler.1.end": 3, "default_hooks.logger.interval": 1,
              "default_hooks.checkpoint.interval": 16, "randomness.seed": 0,
              "train_dataloader.dataset.image_folder": str(city)}
    stage1 = train(str(RECIPES / "stage1_pitts.py"), tmp_path / "stage1", str(tiny_minicpmv), overrides={
        **common, "train_dataloader.dataset.data_path": str(city / "stage1" / "train.json")})
    losses1 = read_losses(stage1)
    assert len(losses1) == 24 and losses1[24] < 0.5 * losses1[1]

    stage2 = train(str(RECIPES / "stage2_pitts.py"), tmp_path / "stage2", str(tiny_minicpmv), overrides={
        **common, "train_dataloader.dataset.data_path": str(city / "vqa" / "train.json"),
        "model.init_from_work_dir": str(stage1)})
    log = (stage2 / "train_stdout.log").read_text()
    assert f"Continued from {stage1}" in log
    losses2 = read_losses(stage2)
    assert losses2[1] < 0.5 * losses1[1]  # started from stage 1, not from the release

    cfg = load_recipe(RECIPES / "stage2_pitts.py")
    cfg.model.update(model_path=str(tiny_minicpmv), torch_dtype="float32", init_from_work_dir=str(stage2))
    model = BUILDER.build(cfg.model)
    for index, colour in [(0, "red"), (1, "green")]:
        image = Image.open(city / "images" / f"{index:03d}.jpg")
        assert model.answer(image, QUESTION, max_new_tokens=12) == f"The colour is {colour}."
    # The same checkpoint through eval/infer.py, as a user answers test questions with it.
    questions = tmp_path / "test_questions.jsonl"
    write_questions(questions, [
        {"question_id": f"colour/{index}", "image": f"images/{index:03d}.jpg", "level": "street",
         "qtype": "generation", "question": QUESTION.split("\n", 1)[1], "answer": f"The colour is {colour}.",
         "street": colour, "district": colour} for index, colour in [(0, "red"), (1, "green")]])
    predictions = tmp_path / "predictions.jsonl"
    subprocess.run([sys.executable, str(REPO / "eval" / "infer.py"), "--config", str(RECIPES / "stage2_pitts.py"),
                    "--checkpoint", str(stage2), "--model-root", str(tiny_minicpmv), "--cfg-options",
                    "model.torch_dtype=float32", "--questions", str(questions), "--out", str(predictions),
                    "--image-folder", str(city), "--max-new-tokens", "12"], check=True, capture_output=True)
    answers = {qid: text for qid, (_, text) in read_predictions(predictions).items()}
    assert answers == {"colour/0": "The colour is red.", "colour/1": "The colour is green."}
