"""The launcher of `xmodal-slurm-array`: a Hydra launcher that submits nothing and hands the sweep's jobs, exactly as
Hydra's sweeper expanded them, to the command that writes the Slurm array table (fairseq_xmodal/cli/slurm_array.py).

xmodal-slurm-array selects it with `hydra.launcher._target_=hydra_plugins.xmodal.array_launcher.ArrayTableLauncher`
on top of a submitit_slurm launcher config, so its parameters are that config's keys (partition, nodes, timeout_min,
...): one set of cluster settings serves both paths. Hydra instantiates launchers only from the `hydra_plugins`
package, which is why this class lives here; it imports nothing beyond Hydra's submitit plugin (Hydra imports every
module of this package at start-up)."""
from typing import Any, Callable, Optional, Sequence

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the [slurm] extra is not installed: xmodal-slurm-array says so
    SlurmLauncher = None

if SlurmLauncher is not None:

    class ArrayTableLauncher(SlurmLauncher):
        # Set by xmodal-slurm-array for the duration of one Hydra run:
        # collect(launcher, job_overrides, initial_job_idx) -> [JobReturn]
        collect: Optional[Callable[[Any, Sequence[Sequence[str]], int], Any]] = None

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            if ArrayTableLauncher.collect is None:
                raise RuntimeError("ArrayTableLauncher only collects the jobs of xmodal-slurm-array; to submit a "
                                   "sweep through submitit use hydra/launcher=slurm")
            return ArrayTableLauncher.collect(self, job_overrides, initial_job_idx)
