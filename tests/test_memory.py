"""tools/estimate_memory.py: exact counts at the real releases' sizes, and the README table it generates."""
import json
import subprocess
import sys

from addressvlm.training.recipes import load_recipe

from addressvlm.checks.memory import estimate, readme_block
from conftest import REPO
from scripts import script

CLIP_LORA_PER_LAYER = 4 * 128 * (1024 + 1024) + 2 * 128 * (1024 + 4096)  # q, k, v, out; fc1, fc2
PHI3_LORA_PER_LAYER = 128 * ((3072 + 9216) + (3072 + 3072) + (3072 + 16384) + (8192 + 3072))  # qkv, o, gate_up, down


def test_llava_phi3_mini_counts_at_real_size():
    result = estimate(load_recipe(str(REPO / "recipes" / "stage1_pitts.py")))
    parts = result["parts"]
    assert parts["llm_lora"] == 32 * PHI3_LORA_PER_LAYER
    assert parts["vision_lora"] == 23 * CLIP_LORA_PER_LAYER  # not CLIP's 24th layer: the LLM reads hidden_states[-2]
    assert parts["connector"] == 1024 * 3072 + 3072 + 3072 * 3072 + 3072  # the 2-layer MLP projector
    assert result["trainable_params"] == sum(parts[k] for k in ("llm_lora", "vision_lora", "connector"))
    assert 268e6 < result["trainable_params"] < 269e6
    assert 3.82e9 < parts["frozen_llm"] < 3.83e9 and 0.30e9 < parts["frozen_vision"] < 0.31e9
    zero2 = result["memory"]["zero2"]
    assert abs(zero2["weights_gb"] - 2 * (result["frozen_params"] + result["trainable_params"]) / 1e9) < 1e-6


def test_cli_json_and_the_readme_table_agree(tmp_path):
    out = tmp_path / "m.json"
    done = subprocess.run([sys.executable, "tools/estimate_memory.py", "recipes/minicpmv26/stage1_pitts.py",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["trainable_params"] > 0 and figures["frozen_params"] > 7e9
    assert figures["parts"]["llm_lora"] == 28 * 128 * (2 * (3584 + 3584) + 2 * (3584 + 512))  # q, o; k, v (GQA)
    assert readme_block(REPO) in (REPO / "README.md").read_text(), \
        "README memory table is stale: python tools/estimate_memory.py --readme README.md"


def test_outputs_are_checked_before_the_estimate(tmp_path, capsys):
    """`--json` naming a folder or an unwritable place failed only after the estimate, and `--readme` naming a file
    outside a checkout was a traceback: each is now one line, before any table."""
    import pytest

    from addressvlm.checks.memory import README_END, README_START
    main = script("tools/estimate_memory.py").main

    (tmp_path / "x.md").write_text(f"# Elsewhere\n{README_START}\n{README_END}\n")
    (tmp_path / "afile").write_text("")
    recipe = str(REPO / "recipes" / "stage1_pitts.py")
    for args, message in (
            ([recipe, "--json", str(tmp_path)], f"{tmp_path}: --json is a folder: give a file name"),
            ([recipe, "--json", str(tmp_path / "afile" / "m.json")], "--json cannot be made: "),
            ([recipe, "--json", "/sys/m.json"], "/sys/m.json: --json cannot be written: /sys refuses new files"),
            ([recipe, "--json", recipe], "--json is the recipe input itself"),
            (["--readme", str(tmp_path / "elsewhere" / "x.md")], "--readme not found: give the checkout's README.md"),
            (["--readme", str(tmp_path / "x.md")], "--readme is not a checkout's README: no recipes/stage1_pitts.py "
                                                   "beside it")):
        with pytest.raises(SystemExit) as refused:
            main(args)
        assert str(refused.value).startswith("error: ") and message in str(refused.value)
        assert "\n" not in str(refused.value)
        assert capsys.readouterr().out == ""
