"""Hydra discovers this at start-up, before it composes any config. Importing fairseq_xmodal here registers the s2c/t2c
tasks, the models and the criterion in fairseq's registries and Hydra's ConfigStore, and the `${xmodal_user_dir:}`
resolver that config/*.yaml use for `common.user_dir`, so plain `fairseq-hydra-train --config-dir config ...` works
from any directory without editing a path."""
import os

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

import fairseq_xmodal  # noqa: F401

_REPO_CONFIG = os.path.join(os.path.dirname(fairseq_xmodal.USER_DIR), "config")


class XmodalSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # Source checkouts (pip install -e): `--config-name s2c_base` also works without --config-dir.
        if os.path.isdir(_REPO_CONFIG):
            search_path.append(provider="fairseq-xmodal", path=f"file://{_REPO_CONFIG}")
