"""fairseq-xmodal: cross-modal (speech <-> text) knowledge transfer for SpeechT5 classifiers, as a fairseq plugin."""
from setuptools import find_namespace_packages, find_packages, setup

setup(
    name="fairseq-xmodal",
    version="0.1.0",
    description="fairseq user-dir with s2c/t2c SpeechT5 classifiers, SLUE-VoxCeleb data prep and cross-modal transfer",
    python_requires=">=3.8",
    packages=find_packages(include=["fairseq_xmodal", "fairseq_xmodal.*", "data_prep", "data_prep.*"])
    + find_namespace_packages(include=["hydra_plugins.*"]),
    # torch, fairseq (or fairseq-fixed) and hydra are deliberately not listed: they must match the user's CUDA
    # stack and fairseq declares torchaudio, which would drag in another torch. See docs/install.md.
    install_requires=["sentencepiece", "soundfile", "pandas", "scikit-learn", "scipy", "tqdm", "matplotlib", "safetensors"],
    entry_points={
        "console_scripts": [
            "xmodal-make-official-checkpoint=fairseq_xmodal.cli.make_official:main",
            "xmodal-import-official=fairseq_xmodal.cli.import_official:main",
            "xmodal-prepare-slue=data_prep.slue_voxceleb:main",
            "xmodal-prep-slue=data_prep.slue_voxceleb:main",  # deprecated alias of xmodal-prepare-slue
            "xmodal-make-demo-corpus=data_prep.demo_corpus:main",
            "xmodal-transfer=fairseq_xmodal.cli.transfer:main",
            "xmodal-prepare-transplants=fairseq_xmodal.cli.transplant:main",
            "xmodal-evaluate=fairseq_xmodal.cli.evaluate:main",
            "xmodal-report=fairseq_xmodal.cli.report:main",
            "xmodal-sweep-table=fairseq_xmodal.cli.sweep_table:main",
            "xmodal-slurm-array=fairseq_xmodal.cli.slurm_array:main",
            "xmodal-probe=fairseq_xmodal.cli.probe:main",
        ]
    },
)
