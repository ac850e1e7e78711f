"""Quiet by default, `--verbose` for more: what the `xmodal-*` commands print besides their own output.

fairseq makes noise that says nothing about a command's work: importing it logs "Please install tensorboardX" at INFO
(fairseq/tasks/text_to_speech.py) after fairseq/models/wav2vec/wav2vec2_classification.py has set the root logger to
DEBUG with a stderr handler, so every later INFO record of fairseq is printed too; and building a model with
torch.nn.utils.weight_norm (the positional convolution) warns that it is deprecated. `before_fairseq_import` runs
when this package is imported, before fairseq is; `configure` runs at the start of every command
(cli/errors.console_main): WARNING and up only, the weight_norm FutureWarning filtered, unless `--verbose`.
"""
import logging
import warnings
from typing import Optional, Sequence

VERBOSE = "--verbose"
VERBOSE_HELP = "show fairseq's INFO logging and library warnings (default: only this command's output and problems)"
# loggers whose import-time INFO records are notices about optional packages, not about the command's work
IMPORT_NOTICES = ("fairseq.tasks.text_to_speech",)
WEIGHT_NORM = r".*torch\.nn\.utils\.weight_norm.* is deprecated"


def before_fairseq_import() -> None:
    for name in IMPORT_NOTICES:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:  # a level the user set is kept
            logger.setLevel(logging.WARNING)


def wants_verbose(argv: Optional[Sequence[str]]) -> bool:
    return VERBOSE in (argv or ())


def configure(verbose: bool) -> None:
    """The logging and warnings of one command run."""
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore", message=WEIGHT_NORM, category=FutureWarning)


def add_verbose(parser) -> None:
    parser.add_argument(VERBOSE, action="store_true", help=VERBOSE_HELP)
