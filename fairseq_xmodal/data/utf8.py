"""Text files of a data folder are UTF-8: a byte-order mark (Windows editors write one) is stripped, anything that
is not UTF-8 is an error naming the file and the offending byte."""
from typing import List


def read_utf8(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at offset {e.start}): "
                         f"re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_utf8_lines(path: str) -> List[str]:
    """Lines without their newline (a final newline does not make an empty last line)."""
    text = read_utf8(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
