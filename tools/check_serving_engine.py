#!/usr/bin/env python
"""Do a serving engine's greedy answers equal eval/infer.py's? (docs/serving.md)

    python tools/check_serving_engine.py --base-url http://127.0.0.1:8000/v1 --model addressvlm \
        --questions data/helsinki/vqa/test_questions.jsonl --predictions demo_output/predictions/stage1_stage2.jsonl \
        --out demo_output/predictions/stage1_stage2.endpoint.jsonl
Works with vLLM, lmdeploy and tools/serve.py alike; exit 1 when fewer than --min-agreement of the answers agree.
"""
from addressvlm.endpoint_check import main

if __name__ == "__main__":
    main()
