"""tools/export_hf.py on the tiny LLaVA-Phi3: the folder loads in transformers, answers as the XTuner path does, and
its processor works as saved."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from addressvlm.answering.answering import answer_questions
from addressvlm.answering.loading import load_hf_model, load_xtuner_model
from addressvlm.core.records import read_predictions, read_questions
from helpers import RECIPE, REPO, model_options, write_city_questions, write_synthetic_checkpoint
from scripts import script


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_llava):
    """A synthetic checkpoint (LoRA and projector moved off their initial values) and its export, by the CLI."""
    root = tmp_path_factory.mktemp("export")
    options = model_options(tiny_llava)
    checkpoint = write_synthetic_checkpoint(root / "work", options, seed=1)
    out = root / "hf"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "export_hf.py"), "--config", RECIPE,
                           "--checkpoint", str(checkpoint.parent), "--model-root", str(tiny_llava),
                           "--out", str(out), "--dtype", "float32"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return checkpoint, options, out


def test_folder_is_a_llava_hf_layout(exported):
    out = exported[2]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["text_config"]["architectures"] == ["Phi3ForCausalLM"]
    assert config["text_config"]["model_type"] == "phi3" and "auto_map" not in config["text_config"]
    assert config["vision_feature_select_strategy"] == "default" and config["vision_feature_layer"] == -2
    assert config["image_aspect_ratio"] == "pad"
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["patch_size"] == 14 and processor["num_additional_image_tokens"] == 1
    generation = json.loads((out / "generation_config.json").read_text())
    tokens = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    by_name = {t["content"]: t["id"] for t in tokens}
    assert config["image_token_index"] == by_name["<image>"]
    assert set(generation["eos_token_id"]) == {by_name["<|end|>"], by_name["<|endoftext|>"]}
    # Weights readable like every other file (safetensors wrote them 0600: unreadable to a server run as another user).
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == \
        {p.name: 0o666 & ~umask for p in out.iterdir()}


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_never_writes_over_its_inputs(exported, tiny_llava, tmp_path):
    """`--model-root X --out X` replaced the release's config, weights and tokenizer; an output inside the release,
    or holding the checkpoint, is refused too, and a non-empty folder without --replace: one line, nothing written."""
    export = script("tools/export_hf.py").main

    checkpoint = exported[0]
    release = tmp_path / "release"
    shutil.copytree(tiny_llava, release)
    before = snapshot(release)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    for out, message in ((release, f"{release}: --out is the --model-root input itself"),
                         (release / "hf", f"{release / 'hf'}: --out lies inside the --model-root input {release}"),
                         (checkpoint.parent, f"{checkpoint.parent}: --out holds the --checkpoint input"),
                         (tmp_path / "notes", "is not empty (mine.txt): give a new or empty folder, or --replace")):
        with pytest.raises(SystemExit) as refused:
            export(["--config", RECIPE, "--checkpoint", str(checkpoint.parent), "--model-root", str(release),
                    "--out", str(out), "--dtype", "float32"])
        assert str(refused.value).startswith("error: ") and message in str(refused.value)
        assert "\n" not in str(refused.value)
    assert snapshot(release) == before and (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    with pytest.raises(SystemExit, match="is the --model-root input itself"):  # --replace never reaches an input
        export(["--config", RECIPE, "--checkpoint", str(checkpoint.parent), "--model-root", str(release),
                "--out", str(release), "--replace"])
    assert snapshot(release) == before


def test_a_killed_export_leaves_no_half_folder(exported, tiny_llava, tmp_path):
    """A kill mid-export left config.json or tokenizer.json at 0 bytes in --out. Now the export is written beside it
    and swapped in whole: killed, --out is as it was (absent, or the earlier export); --replace swaps it."""
    checkpoint, _, done = exported
    killed_at_the_last_file = (
        "import os, runpy, shutil\n"
        "shutil.copyfile = lambda *args, **kwargs: os.kill(os.getpid(), 9)\n"
        f"runpy.run_path({str(REPO / 'tools' / 'export_hf.py')!r}, run_name='__main__')\n")
    earlier = tmp_path / "earlier"
    shutil.copytree(done, earlier)
    (earlier / "stale.bin").write_bytes(b"from an older export")
    before = snapshot(earlier)
    for out in (tmp_path / "fresh", earlier):
        run = subprocess.run([sys.executable, "-c", killed_at_the_last_file, "--config", RECIPE,
                              "--checkpoint", str(checkpoint.parent), "--model-root", str(tiny_llava),
                              "--out", str(out), "--dtype", "float16", "--replace"],
                             capture_output=True, text=True, cwd=REPO)
        assert run.returncode == -9, run.stderr[-2000:]
    assert not (tmp_path / "fresh").exists() and snapshot(earlier) == before
    again = subprocess.run([sys.executable, str(REPO / "tools" / "export_hf.py"), "--config", RECIPE,
                            "--checkpoint", str(checkpoint.parent), "--model-root", str(tiny_llava),
                            "--out", str(earlier), "--dtype", "float32", "--replace"],
                           capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert snapshot(earlier) == snapshot(done)  # the stale file gone with the rest of the old export
    # The killed run's staging folder is cleared by the next export to that folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fresh.staging", "earlier"]


def test_hf_answers_equal_the_xtuner_path(exported, tmp_path):
    checkpoint, options, out = exported
    questions_path = write_city_questions(tmp_path / "city", images=2)
    ours = tmp_path / "xtuner.jsonl"
    xtuner = load_xtuner_model(RECIPE, checkpoint, options)
    answer_questions(xtuner, read_questions(questions_path), ours, tmp_path / "city", max_new_tokens=8,
                     progress=False)
    theirs = tmp_path / "hf.jsonl"
    done = subprocess.run([sys.executable, str(REPO / "eval" / "infer.py"), "--hf", str(out), "--questions",
                           str(questions_path), "--out", str(theirs), "--max-new-tokens", "8"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = read_predictions(ours)
    assert read_predictions(theirs) == expected
    assert all(len(p) > 3 for _, p in expected.values())
    assert len({p for _, p in expected.values()}) > 3


@torch.inference_mode()
def test_processor_and_generate_as_saved(exported):
    """Plain transformers use of the folder (processor, chat template, generate) gives our greedy answer."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = exported[2]
    question = "Identify the street in this image, please."
    image = Image.new("RGB", (96, 96), (30, 160, 220))
    image.paste((250, 240, 10), (10, 10, 50, 70))
    processor = AutoProcessor.from_pretrained(out)
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\n" + question}])
    inputs = processor(images=image, text=text, return_tensors="pt", add_special_tokens=False)
    features = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == features
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    from addressvlm.answering.answering import sample_answers

    ours = sample_answers(load_hf_model(out), image, question, n=1, temperature=0, max_new_tokens=8)
    assert answer == ours[0] and len(answer) > 3


def test_chat_template_takes_string_and_list_content(exported):
    """A message's content as a string or as OpenAI's list of parts (what vLLM and TRL's VLM path send) renders the
    same training prompt."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(exported[2])
    question = "Identify the street in this image, please."
    as_string = [{"role": "user", "content": "<image>\n" + question}, {"role": "assistant", "content": "Forbes"}]
    as_parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Forbes"}]}]
    rendered = processor.apply_chat_template(as_string)
    assert processor.apply_chat_template(as_parts) == rendered
    bos = processor.tokenizer.bos_token
    assert rendered == f"{bos}<|user|>\n<image>\n{question}<|end|>\n<|assistant|>\nForbes<|end|>\n"


def test_export_takes_the_lora_shape_from_the_run(tiny_llava, tmp_path):
    """A run trained at another LoRA rank than its recipe's exports with no option given: the work_dir's copy of the
    recipe, its --cfg-options merged (as XTuner saves it), gives the rank and alpha."""
    from mmengine.config import Config

    from addressvlm.answering.export import export_hf
    from addressvlm.training.recipes import parse_cfg_options

    options = model_options(tiny_llava)
    rank_8 = [f"model.{adapter}.{key}={value}" for adapter in ("llm_lora", "visual_encoder_lora")
              for key, value in (("r", 8), ("lora_alpha", 16))]
    write_synthetic_checkpoint(tmp_path / "work", options + rank_8)
    saved = Config.fromfile(RECIPE)
    saved.merge_from_dict(parse_cfg_options(options + rank_8))
    saved.dump(str(tmp_path / "work" / Path(RECIPE).name))
    out = export_hf(RECIPE, tmp_path / "work", tmp_path / "hf", dtype="float32", model_root=tiny_llava)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]


def test_hf_ranks_names_as_the_xtuner_path(exported, tmp_path):
    """The exported folder scores an answer's tokens, its end of turn included, as the XTuner recipe does."""
    from addressvlm.answering.ranking import rank_image_questions

    checkpoint, options, out = exported
    hf, xtuner = load_hf_model(out), load_xtuner_model(RECIPE, checkpoint, options)
    names = ["Forbes Avenue", "Forbes", "Craig Street", "Forbes Avenue, Oakland"]
    assert [hf.answer_ids(n) for n in names] == [xtuner.answer_ids(n) for n in names]
    image = Image.new("RGB", (64, 40), (120, 60, 200))
    question = "Identify the street in this image, please."
    ours = rank_image_questions(xtuner, image, [question], [names])[0]
    theirs = rank_image_questions(hf, image, [question], [names])[0]
    assert [r["name"] for r in theirs] == [r["name"] for r in ours]
    # Merged LoRA weights round differently from adapters applied on the fly: close, not equal.
    assert [r["logprob"] for r in theirs] == pytest.approx([r["logprob"] for r in ours], rel=1e-3)


# ------------------------------------------------------------------------------------------ MiniCPM-V
@torch.inference_mode()
def test_minicpmv_export_is_the_release_layout_with_lora_merged(tiny_minicpmv_checkpoint, tiny_minicpmv, tmp_path):
    """The export holds exactly the release's tensor names and files, loads through the hub code as the engines load
    it (AutoModel, trust_remote_code), and answers and scores as the recipe with its LoRA adapters does."""
    from safetensors import safe_open
    from transformers import AutoModel

    export = script("tools/export_hf.py").main
    from addressvlm.answering.loading import load_hf_model
    from addressvlm.training.minicpmv_dataset import encode_question
    from addressvlm.training.remote_code import hub_code_names

    recipe, checkpoint, options = tiny_minicpmv_checkpoint
    out = tmp_path / "minicpmv"
    export(["--config", recipe, "--checkpoint", str(checkpoint.parent), "--model-root", str(tiny_minicpmv),
            "--out", str(out), "--dtype", "float32"])
    assert {p.name for p in tiny_minicpmv.iterdir()} | {"xtuner_config.py"} == {p.name for p in out.iterdir()}
    for name in ("tokenizer_config.json", "tokenizer.json", "modeling_minicpmv.py", "resampler.py"):
        assert (out / name).read_bytes() == (tiny_minicpmv / name).read_bytes(), name
    for name in ("config.json", "preprocessor_config.json"):  # the release's, the dtype and slice cap as trained
        release, exported = (json.loads((folder / name).read_text()) for folder in (tiny_minicpmv, out))
        assert exported == {**release, **{k: v for k, v in exported.items() if k in ("torch_dtype", "max_slice_nums")}}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    with safe_open(out / "model.safetensors", "pt") as exported, \
            safe_open(tiny_minicpmv / "model.safetensors", "pt") as release:
        assert set(exported.keys()) == set(release.keys())
        moved = "llm.model.layers.0.self_attn.q_proj.weight"  # LoRA merged into it
        assert not torch.equal(exported.get_tensor(moved), release.get_tensor(moved))
        kept = "llm.model.layers.0.mlp.up_proj.weight"  # no LoRA on the MLP
        assert torch.equal(exported.get_tensor(kept), release.get_tensor(kept))

    ours = load_xtuner_model(recipe, checkpoint, options)
    with hub_code_names():
        hub = AutoModel.from_pretrained(out, trust_remote_code=True, torch_dtype=torch.float32).eval()
    assert type(hub).__module__.startswith("transformers_modules.")
    image = Image.new("RGB", (64, 40), (120, 60, 200))
    image.paste((250, 250, 10), (5, 5, 30, 30))
    question = "Identify the street in this image, please."
    prompt = encode_question(question, image, ours.model.tokenizer, ours.model.image_settings)
    embeddings, _ = hub.get_vllm_embedding({"input_ids": prompt["input_ids"][None],
                                            "pixel_values": [prompt["pixel_values"]],
                                            "tgt_sizes": [prompt["tgt_sizes"]], "image_bound": [prompt["image_bound"]]})
    theirs = hub.llm(inputs_embeds=embeddings).logits
    unmerged = ours.model.model.llm(inputs_embeds=ours.model.prompt_embeddings(image, question)).logits
    assert torch.allclose(theirs, unmerged, atol=1e-4)
    questions = [question, "What colour is this image?"]
    expected = ours.answer_image(image, questions, max_new_tokens=8)
    assert load_hf_model(out).answer_image(image, questions, max_new_tokens=8) == expected
    assert all(expected)
