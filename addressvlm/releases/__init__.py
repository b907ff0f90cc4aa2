"""The released models' published shapes (``release_configs/``; MiniCPM-V's built from the hub code's layout in
``training/minicpmv_code/``) and a local tokenizer in Phi-3's chat format: models at the releases' sizes without
their downloads.
"""
