#!/usr/bin/env python
"""Serve a trained model (docs/serving.md): an OpenAI-compatible /v1/chat/completions, /v1/locate and a page with the
city map at http://127.0.0.1:8000/.

    python tools/serve.py --demo                                   # after `make demo` (what `make serve` runs)
    python tools/serve.py --config recipes/stage2_pitts.py --checkpoint work_dirs/llava_phi3_mini/stage2_pitts \
        --city data/pitts
    python tools/serve.py --hf exports/stage2_pitts --city data/pitts --host 0.0.0.0 --port 8000
    python tools/serve.py --config recipes/minicpmv26/stage2_pitts.py --checkpoint work_dirs/minicpmv26/stage2_pitts \
        --city data/pitts
"""
from addressvlm.serving import main

if __name__ == "__main__":
    main()
