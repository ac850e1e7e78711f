"""Reading the per-split files of a data folder (docs/data_format.md) with errors that name file and line."""
import os
from typing import List, Optional, Tuple

from .class_dictionary import ClassDictionary
from .utf8 import read_utf8_lines


def read_lines(path: str, what: str) -> List[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found ({what}); run xmodal-prepare-slue or see docs/data_format.md")
    return read_utf8_lines(path)


def read_labels(data: str, split: str, ext: str, class_dict: ClassDictionary, expected: int) -> List[int]:
    path = os.path.join(data, f"{split}.{ext}")
    lines = read_lines(path, "one label per line")
    check_rows(path, len(lines), expected)
    return [class_dict.index(label.strip(), where=f"{path}:{i + 1}") for i, label in enumerate(lines)]


def read_ids(data: str, split: str, expected: int) -> Optional[List[str]]:
    path = os.path.join(data, f"{split}.id")
    if not os.path.isfile(path):
        return None
    ids = read_lines(path, "one utterance id per line")
    check_rows(path, len(ids), expected)
    return ids


def check_rows(path: str, got: int, expected: int):
    if got != expected:
        raise ValueError(
            f"{path} has {got} rows but the split has {expected}: every file of a split must list the same "
            f"utterances in the same order; re-run xmodal-prepare-slue"
        )


def read_manifest(data: str, split: str) -> Tuple[str, List[str], List[int]]:
    """wav2vec-style manifest -> (audio root, relative paths, sample counts). A relative root is taken from `data`."""
    path = os.path.join(data, f"{split}.tsv")
    lines = read_lines(path, "audio manifest")
    if not lines:
        raise ValueError(f"{path} is empty: line 1 must be the audio root directory")
    root = lines[0].strip()
    root = root if os.path.isabs(root) else os.path.join(data, root)
    files, sizes = [], []
    for i, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip().isdigit():
            raise ValueError(f"{path}:{i}: expected `<relative path>\\t<number of samples>`, got {line!r}")
        files.append(parts[0])
        sizes.append(int(parts[1]))
    return root, files, sizes
