"""Progress that shows in Slurm logs too. On a terminal: a tqdm bar. Otherwise (stderr redirected to a file, as in
Slurm jobs): one plain line every `every_pct` percent or every `every_s` seconds, whichever comes first, and at the
end; a bar's carriage returns would be one unreadable line there."""
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], total: Optional[int], desc: str, unit: str = "it", every_pct: float = 10.0,
             every_s: float = 30.0, stream=None) -> Iterator[T]:
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit, file=stream)
        return
    start = last = time.monotonic()
    next_pct, n = every_pct, 0
    for item in iterable:
        yield item
        n += 1
        now = time.monotonic()
        pct = 100.0 * n / total if total else 0.0
        if (total and (n == total or pct >= next_pct)) or now - last >= every_s:
            eta = f", about {(now - start) * (total - n) / n:.0f} s left" if total and n < total else ""
            count = f"{n}/{total} {unit} ({pct:.0f}%)" if total else f"{n} {unit}"
            print(f"{desc}: {count}, {now - start:.0f} s{eta}", file=stream, flush=True)
            last = now
            while total and next_pct <= pct:
                next_pct += every_pct
