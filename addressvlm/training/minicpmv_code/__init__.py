"""A tiny stand-in for ``openbmb/MiniCPM-V-2_6``'s hub code, laid out as the release lays it out.

The release's Python lives in its model folder and is loaded as remote code (``trust_remote_code=True``):
``configuration_minicpm.py``, ``modeling_minicpmv.py`` (which imports ``.configuration_minicpm``, ``.resampler`` and
``.modeling_navit_siglip``), ``modeling_navit_siglip.py``, ``resampler.py`` and ``image_processing_minicpmv.py`` (named
by ``preprocessor_config.json``'s ``auto_map``). ``addressvlm.standins.tiny_minicpmv.write_tiny_minicpmv`` copies the
files of this folder into a model folder under the same names, so ``AutoModel.from_pretrained(folder,
trust_remote_code=True)`` takes the road it takes for the release, including its import structure: ``resampler.py``
here star-imports ``torch.nn.functional`` and annotates with a name it never imports, as the release's does, so a
torch that no longer exports that name fails here as it fails there (``addressvlm.training.remote_code``). vLLM serves
such a folder with its own MiniCPM-V implementation, running the folder's config and image processor code.

They are files to copy (torch, numpy, PIL and transformers only). ``releases.shapes`` builds MiniCPM-V at the release's
shapes from them under the release's module names (``remote_code.hub_code_names``); the project's prompts
(``training.minicpmv_dataset``) import the image processor's slicing, so training and the engines cut images alike.
The tokenizer and ``processing_minicpmv.py`` of the release are not stood in for: the stand-in's tokenizer is a plain
fast tokenizer, and vLLM pairs the image processor with it in its own ``MiniCPMVProcessor``.
"""
