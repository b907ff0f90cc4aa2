"""The released models' published shapes (``release_configs/``), the MiniCPM-V hub code's file layout
(``minicpmv_code/``) and a local tokenizer in Phi-3's chat format: models at the releases' sizes without their
downloads.
"""
