"""AddressVLM recipes: data tools, model wrappers, inference and metrics for XTuner."""

import logging

# bitsandbytes (installed for QLoRA on GPUs) warns on import, through peft, that a CPU build has no GPU support:
# nothing a user can act on, printed above every tool's one-line usage error.
logging.getLogger("bitsandbytes.cextension").setLevel(logging.ERROR)
