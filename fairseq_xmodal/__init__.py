"""fairseq-xmodal: SpeechT5 speech (s2c) and text (t2c) classifiers and cross-modal transfer, as a fairseq user-dir.

Importing the package registers tasks `s2c` and `t2c`, model `speecht5` (sizes: fairseq_xmodal/config/model/*.yaml), the criteria
`xmodal_classification` and `xmodal_mona`, applies the package's fairseq patches (fairseq_patches.py: safe checkpoint
loading, checks before training starts from a checkpoint (training_guard.py), data-parallel training on CPU, task-state
check on every rank), and registers the OmegaConf resolvers `${xmodal_user_dir:}` (fairseq_xmodal/config/*.yaml use it for
`common.user_dir`) and `${xmodal_transplanted:}`.
"""
from omegaconf import OmegaConf

from . import console

console.before_fairseq_import()  # before fairseq's import-time notices (console.py)

from . import fairseq_patches  # noqa: E402
from .checkpoints import USER_DIR  # noqa: E402
from .criterions import classification, mona, xmodal_align  # noqa: F401  (fairseq does not auto-import user criterions)
from .models import speecht5  # noqa: F401
from .tasks import s2c, t2c  # noqa: F401

fairseq_patches.install()
# omegaconf >= 2.1 (fairseq-fixed and the constraints require it; fairseq 0.12.2's 2.0 pin is not supported)
if not OmegaConf.has_resolver("xmodal_user_dir"):
    OmegaConf.register_new_resolver("xmodal_user_dir", lambda: USER_DIR)
if not OmegaConf.has_resolver("xmodal_transplanted"):  # fairseq_xmodal/config/sweep/transplanted/frozen.yaml
    def _transplanted(path):
        from .transfer import transplanted_selectors

        return transplanted_selectors(path)

    OmegaConf.register_new_resolver("xmodal_transplanted", _transplanted)
