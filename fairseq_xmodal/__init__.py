"""fairseq-xmodal: SpeechT5 speech (s2c) and text (t2c) classifiers and cross-modal transfer, as a fairseq user-dir.

Importing the package registers tasks `s2c` and `t2c`, models `speecht5_base` / `speecht5_tiny`, the criteria
`xmodal_classification` and `xmodal_mona`, applies the package's fairseq patches (fairseq_patches.py: safe checkpoint
loading, checks before training starts from a checkpoint (training_guard.py), data-parallel training on CPU, task-state
check on every rank), and registers the OmegaConf resolvers `${xmodal_user_dir:}` (config/*.yaml use it for
`common.user_dir`) and `${xmodal_transplanted:}`.
"""
import os

from omegaconf import OmegaConf

from . import fairseq_patches
from .criterions import classification, mona, xmodal_align  # noqa: F401  (fairseq does not auto-import user criterions)
from .models import speecht5  # noqa: F401
from .tasks import s2c, t2c  # noqa: F401

USER_DIR = os.path.dirname(os.path.abspath(__file__))

fairseq_patches.install()
if hasattr(OmegaConf, "register_new_resolver"):  # omegaconf >= 2.1
    if not OmegaConf.has_resolver("xmodal_user_dir"):
        OmegaConf.register_new_resolver("xmodal_user_dir", lambda: USER_DIR)
    if not OmegaConf.has_resolver("xmodal_transplanted"):  # config/sweep/transplanted/frozen.yaml
        def _transplanted(path):
            from .transfer import transplanted_selectors

            return transplanted_selectors(path)

        OmegaConf.register_new_resolver("xmodal_transplanted", _transplanted)
else:  # omegaconf 2.0, pinned by fairseq==0.12.2
    try:
        OmegaConf.register_resolver("xmodal_user_dir", lambda: USER_DIR)
    except AssertionError:  # already registered
        pass
