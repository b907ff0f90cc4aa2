"""A tiny stand-in for ``openbmb/MiniCPM-V-2_6``'s hub code, laid out as the release lays it out.

The release's Python lives in its model folder and is loaded as remote code (``trust_remote_code=True``):
``configuration_minicpm.py``, ``modeling_minicpmv.py`` (which imports ``.configuration_minicpm``, ``.resampler`` and
``.modeling_navit_siglip``) and ``resampler.py``. ``addressvlm.standins.tiny_minicpmv.write_tiny_minicpmv`` copies the
files of this folder into a model folder under the same names, so ``AutoModel.from_pretrained(folder,
trust_remote_code=True)`` takes the road it takes for the release, including its import structure: ``resampler.py``
here star-imports ``torch.nn.functional`` and annotates with a name it never imports, as the release's does, so a
torch that no longer exports that name fails here as it fails there (``addressvlm.training.remote_code``).

They are files to copy (torch and transformers only); the one import of them, ``releases.shapes``, builds MiniCPM-V
at the release's shapes from them under the release's module names (``remote_code.hub_code_names``).
"""
