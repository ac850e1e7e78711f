"""Hydra discovers this module in every Hydra app of the environment, at start-up, before it composes a config. It
puts fairseq-xmodal's packaged configs (fairseq_xmodal/config/, package data of any install, editable or not) on the
search path, so `fairseq-hydra-train --config-name s2c_base task.data=...` works from any directory; `--config-dir DIR`
still adds a user's own configs, which may extend the packaged ones through their `defaults` list.

It must stay light: it imports only the standard library and Hydra. In particular it must not import `fairseq_xmodal`,
whose __init__ registers tasks/models (torch, fairseq: ~3.5 s, the root logger set to DEBUG, a tensorboardX notice in
every Hydra app). `importlib.util.find_spec` locates the package's folder without executing its __init__; the
package is imported only inside fairseq's own Hydra apps (fairseq-hydra-train), which have loaded torch and fairseq
already and need the registrations before they compose (see manipulate_search_path).

It also turns an unknown `--config-name` of fairseq-hydra-train into a one-line error (exit 2). Without this, fairseq's
`hydra_init(cfg_name)` stores its empty FairseqConfig in Hydra's ConfigStore under whatever name was asked for (the
`structured://` source, last on the search path), so a name that no config folder has, e.g. `t2c_demo` when the
configs are not on the path, silently composes an empty config and fails later with "Key 'data' is not in struct".
"""
import importlib.util
import os
import sys
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "fairseq-xmodal"


def packaged_config_dir() -> Optional[str]:
    """fairseq_xmodal/config of the installed package (a real folder: Hydra's file:// source), found without import."""
    spec = importlib.util.find_spec("fairseq_xmodal")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "config")
    return path if os.path.isdir(path) else None


def _is_fairseq_app(search_path: ConfigSearchPath) -> bool:
    """fairseq-hydra-train (and xmodal-slurm-array, which runs it): the app's own config folder is fairseq/config."""
    return any(e.provider == "main" and os.path.normpath(str(e.path)).endswith(os.path.join("fairseq", "config"))
               for e in search_path.get_path())


def _flag_value(argv: List[str], *flags: str) -> Optional[str]:
    """The value of the first of `flags` in argv (`--flag value` or `--flag=value`); Hydra's own parser would exit
    on foreign arguments."""
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1:]
    return None


def _requested_config(argv: List[str]) -> Optional[str]:
    return _flag_value(argv, "--config-name", "-cn")


def _config_dir_arg(argv: List[str]) -> Optional[str]:
    return _flag_value(argv, "--config-dir", "-cd")


def _primary_source(search_path: ConfigSearchPath, name: str, config_dir: Optional[str]):
    """The first config source of the search path (as Hydra orders it: --config-dir last before the schemas) that
    has config `name`, or None."""
    from hydra._internal.sources_registry import SourcesRegistry

    paths = [(e.provider, str(e.path)) for e in search_path.get_path() if not str(e.path).startswith("structured://")]
    if config_dir:
        paths.append(("command-line", f"file://{os.path.abspath(config_dir)}"))
    for provider, path in paths:
        scheme = path.split("://", 1)[0] if "://" in path else "file"
        if "://" not in path:
            path = f"file://{path}"
        try:
            source = SourcesRegistry.instance().resolve(scheme)(provider, path)
            if source.is_config(name):
                return source
        except Exception:  # an unreadable folder is Hydra's to report, not ours
            continue
    return None


def adopt_fairseq_schema(name: str, source) -> bool:
    """Make fairseq's FairseqConfig defaults an explicit defaults-list entry instead of a same-name schema.

    fairseq-hydra-train stores FairseqConfig in the ConfigStore under the requested config name, and Hydra merges a
    primary config with a same-name schema ("automatic schema matching", deprecated since Hydra 1.1): the schema's
    defaults then override every value that the primary's defaults list composed before its `_self_`, so a config
    that extends another (`defaults: [s2c_base, _self_]`) would train with fairseq's defaults instead of the recipe's.
    For a primary that composes anything before `_self_`, the same-name entry is moved to the group option
    `fairseq_schema/config`; the packaged recipes list `optional fairseq_schema: config` first (so do configs that
    extend them), which merges the same defaults at the start. Configs without such a defaults list keep fairseq's
    behaviour. Returns whether it moved the entry."""
    from hydra.core.config_store import ConfigStore

    defaults = source.load_config(name).config.get("defaults") if source is not None else None
    entries = [str(d) for d in (defaults or [])]
    if not entries or entries[0] == "_self_":
        return False
    repo = ConfigStore.instance().repo
    schema = repo.get(f"{name}.yaml")
    if schema is None:
        return False
    repo.pop(f"{name}.yaml")
    ConfigStore.instance().store(group="fairseq_schema", name="config", node=schema.node, package="_global_")
    return True


def _fairseq_schema_names() -> List[str]:
    """Config names under which fairseq's hydra_init stored FairseqConfig in this process (compared by class name:
    fairseq is not imported here)."""
    from hydra.core.config_store import ConfigNode, ConfigStore
    from omegaconf import OmegaConf

    return [key[:-len(".yaml")] for key, node in list(ConfigStore.instance().repo.items())
            if isinstance(node, ConfigNode) and key.endswith(".yaml")
            and getattr(OmegaConf.get_type(node.node), "__name__", "") == "FairseqConfig"]


class XmodalSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        config = packaged_config_dir()
        fairseq_app = _is_fairseq_app(search_path)
        config_dir = _config_dir_arg(sys.argv[1:]) if fairseq_app else None
        if config_dir and os.path.isdir(config_dir):
            # Hydra adds --config-dir later, after the plugins' entries: put it before ours too, so that a config of
            # the user's wins over a packaged one of the same name (Hydra's own entry then finds nothing new)
            search_path.append(provider="command-line", path=f"file://{os.path.abspath(config_dir)}")
        if config is not None:
            search_path.append(provider=PROVIDER, path=f"file://{config}")
        if fairseq_app:
            # fairseq-hydra-train has imported torch and fairseq already. fairseq applies the dataclass defaults of
            # task/model/criterion (add_defaults) and resolves `${xmodal_user_dir:}` before it imports
            # common.user_dir, so the registrations must exist now; no other Hydra app imports fairseq_xmodal here.
            if "fairseq" in sys.modules:
                importlib.import_module("fairseq_xmodal")
            name = _requested_config(sys.argv[1:])
            name = name[:-len(".yaml")] if name and name.endswith(".yaml") else name
            if name is not None and name != "config" and _primary_source(search_path, name, config_dir) is None:
                where = [os.path.abspath(config_dir)] if config_dir else []
                where += [config] if config else []
                print(f"fairseq-hydra-train: no config named '{name}' in the config search path "
                      f"({', '.join(where)}); check the name, or give the folder that holds {name}.yaml with "
                      f"--config-dir DIR", file=sys.stderr)
                sys.exit(2)
        # wherever fairseq's hydra_init ran (fairseq-hydra-train, or a compose() that mimics it)
        for name in _fairseq_schema_names():
            adopt_fairseq_schema(name, _primary_source(search_path, name, config_dir))
