"""The XTuner glue: the recipes' model and dataset classes (LLaVA, MiniCPM-V, the retrievers), the stage chain,
precision, checkpoints, the CPU shims, recipe loading and the training launcher.
"""
