"""fairseq_patches.py is the one place that changes fairseq at runtime. These tests fail when fairseq changes under a
patch: a patched function is not recorded in PATCHED (whose signatures tests/test_distributed.py compares with
inspect.signature), or fairseq loads checkpoints somewhere the safe-load proxy does not cover."""
import importlib
import inspect

import fairseq_xmodal  # noqa: F401  (installs the patches)
from fairseq_xmodal import fairseq_patches


def test_every_replaced_function_is_recorded():
    assert fairseq_patches._original  # install() ran
    recorded = {name.split(":")[1] for name in fairseq_patches.PATCHED}
    assert set(fairseq_patches._original) <= recorded, set(fairseq_patches._original) - recorded


def test_every_fairseq_torch_load_goes_through_the_safe_proxy():
    """fairseq calls the module-global torch.load; every caller must be in a module whose `torch` is the proxy, and
    be recorded (a new call site in a fairseq upgrade must be looked at)."""
    recorded = set(fairseq_patches.PATCHED)
    for module_name in fairseq_patches.SAFE_LOAD_MODULES:
        module = importlib.import_module(module_name)
        assert isinstance(module.torch, fairseq_patches.TorchWithSafeLoad)
        assert module.torch.load is fairseq_patches.safe_load.safe_torch_load
        for name, fn in vars(module).items():
            fn = fairseq_patches._original.get(name, fn)
            if inspect.isfunction(fn) and fn.__module__ == module_name and "torch.load(" in inspect.getsource(fn):
                assert f"{module_name}:{name}" in recorded, f"{module_name}.{name} calls torch.load unrecorded"
