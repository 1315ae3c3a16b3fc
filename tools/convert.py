"""Convert a Hugging Face-layout HGRN-Bit checkpoint (or an mmfree model file) into an mmfree
model file.

The ternary matrices and their scales come from the checkpoint's *latent* weights
(:func:`mmfree.sim.model.from_state_dict`), never from re-quantizing ternary values. An existing
model file can be repacked (e.g. "2bit" -> "1.6bit"); its contents are otherwise unchanged.
The CLI (``mmfree convert``) wraps :func:`convert` and reports
:class:`~mmfree.sim.modelfile.ModelFormatError` and :class:`FileExistsError` as one line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from ..sim.model import Model, from_state_dict
from ..sim.modelfile import ModelFormatError, load_model, save_model
from ..sim.packing import PACKINGS
from .checkpoint import load_checkpoint

__all__ = ["convert"]

logger = logging.getLogger(__name__)


def convert(src: str | os.PathLike, out: str | os.PathLike, *, packing: str = "2bit",
            force: bool = False) -> Model:
    """Read ``src`` (a checkpoint directory, or an mmfree model file to repack), write the model
    file ``out`` with ``packing``, and return the model as written."""
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, not {packing!r}")
    src, out = Path(src), Path(out)
    if out.exists() and not force:       # fail before reading a large checkpoint
        raise FileExistsError(f"{out} already exists (use force to overwrite it)")
    if src.is_dir():
        logger.info("reading checkpoint %s", src)
        config, sd, tokenizer = load_checkpoint(src)
        config = dataclasses.replace(config, packing=packing)
        try:
            model = from_state_dict(config, sd, tokenizer)
        except ValueError as error:
            raise ModelFormatError(str(error)) from None
    elif src.is_file():
        try:
            model = load_model(src)
        except ModelFormatError as error:
            if "not an mmfree model file" in str(error):
                raise ModelFormatError(f"{error}; to convert a Hugging Face checkpoint, pass "
                                       f"its directory") from None
            raise
        model.config = dataclasses.replace(model.config, packing=packing)
    else:
        raise ModelFormatError(f"no such checkpoint directory or model file: {src}")
    logger.info("writing %s (%s packing)", out, packing)
    save_model(model, out, force=force)
    return model
