"""Make a "bare GPU machine" Python out of this one, for `make bench-gpu-smoke`: a venv that sees torch, transformers
(and their own dependencies, and pip) and nothing else, so that scripts/gpu_bench.sh has to install every other
package from the wheel folder, fairseq-fixed built from its sdist included.

    python scripts/bare_python.py OUT        # -> OUT/venv/bin/python; OUT/base holds symlinks to the packages
"""
import importlib.metadata as md
import os
import re
import subprocess
import sys

KEEP = ("torch", "transformers", "pip")


def closure(names):
    seen, todo = {}, list(names)
    while todo:
        name = re.split(r"[ ;<>=!~\[]", todo.pop())[0].lower().replace("_", "-")
        if not name or name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional dependency that is not installed
        seen[name] = dist
        todo += [r for r in (dist.requires or []) if "extra ==" not in r]
    return seen


def main(out):
    base = os.path.join(out, "base")
    os.makedirs(base, exist_ok=True)
    for dist in closure(KEEP).values():
        top = {str(f).split("/")[0] for f in dist.files or []}
        for entry in top:
            src = os.path.join(str(dist.locate_file("")), entry)
            dst = os.path.join(base, entry)
            if entry != ".." and not entry.startswith("__pycache__") and os.path.exists(src) \
                    and not os.path.lexists(dst) and not entry.endswith(".pth"):
                os.symlink(src, dst)
    venv = os.path.join(out, "venv")
    exe = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([exe, "-m", "venv", "--without-pip", venv], check=True)
    site = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "_bare_base.pth"), "w") as f:
        f.write(os.path.abspath(base) + "\n")
    print(os.path.join(venv, "bin", "python"))


if __name__ == "__main__":
    main(sys.argv[1])
