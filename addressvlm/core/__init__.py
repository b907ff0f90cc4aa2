"""What every wing shares: the data files' readers and writers (``records``), name normalisation (``names``), the
question templates (``templates``) and worker processes (``processes``). Imports nothing else of the package.
"""
