"""The conv feature-extractor spec string (`conv_feature_layers`), read without running it.

Official SpeechT5 (like wav2vec 2.0) stores the spec as Python source, e.g. "[(512,10,5)] + [(512,3,2)] * 4", and
`eval`s it. The string comes from the checkpoint's config, so `eval` would run whatever a tampered file puts there
(the weights-only unpickler lets any plain string through). We parse it with `ast` and evaluate only the official
syntax: list/tuple displays of int literals, `+` and `*`. Anything else (names, calls, attributes, strings, floats,
other operators) is refused with an error naming the field and where it came from.
"""
import ast
from typing import List, Optional, Tuple

FIELD = "conv_feature_layers"
EXAMPLE = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
MAX_LAYERS = 64  # the official stack has 7; a cap also stops `[(1,1,1)] * 10**9` from eating memory
MAX_INT = 1 << 20


class ConvSpecError(ValueError):
    pass


def _value(node: ast.AST):
    """int, or tuple/list of values; raises ValueError naming the first construct outside the official syntax."""
    if isinstance(node, ast.Constant) and type(node.value) is int:  # not bool, not float/str
        if not 0 <= node.value <= MAX_INT:
            raise ValueError(f"integer {node.value} out of range")
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_value(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        a, b = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Add):
            if type(a) is not type(b):
                raise ValueError("`+` joins two lists (or two ints)")
            out = a + b
        else:
            seq, n = (a, b) if isinstance(b, int) else (b, a)
            if not isinstance(n, int):
                raise ValueError("`*` repeats a list an integer number of times")
            if not isinstance(seq, int) and len(seq) * n > MAX_LAYERS:
                raise ValueError(f"more than {MAX_LAYERS} layers")
            out = seq * n
        if isinstance(out, int) and out > MAX_INT:
            raise ValueError(f"integer {out} out of range")
        return out
    what = repr(node.value) if isinstance(node, ast.Constant) else type(node).__name__
    raise ValueError(f"{what} is not allowed (only lists/tuples of ints, + and *)")


def parse_conv_layers(text, where: Optional[str] = None) -> List[Tuple[int, int, int]]:
    """"[(512,10,5)] + [(512,3,2)] * 4" -> [(512, 10, 5), (512, 3, 2), ...] (dim, kernel, stride), never executed."""
    src = f" in {where}" if where else ""
    if not isinstance(text, str):
        raise ConvSpecError(f"{FIELD}{src} is a {type(text).__name__}, not a spec string such as {EXAMPLE!r}")
    try:
        if len(text) > 2000:
            raise ValueError("longer than 2000 characters")
        tree = ast.parse(text.strip(), mode="eval")
        layers = _value(tree.body)
        if not isinstance(layers, list) or not layers:
            raise ValueError("the result is not a non-empty list")
        for layer in layers:
            if not (isinstance(layer, tuple) and len(layer) == 3 and all(isinstance(x, int) and x > 0 for x in layer)):
                raise ValueError(f"layer {layer!r} is not a (dim, kernel, stride) tuple of positive ints")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ConvSpecError(f"{FIELD}{src} = {text[:200]!r} is refused: {e}. It must be a list of (dim, kernel, "
                            f"stride) tuples built with + and *, e.g. {EXAMPLE!r}; nothing else is evaluated") from None
    return layers


def is_plain_spec(text: str) -> bool:
    """True if `text` is a Python literal (e.g. '(0.9, 0.98)') or list/int arithmetic as above (e.g. fconv's
    '[(512, 3)] * 20'): what the config fields fairseq `eval`s hold in a genuine checkpoint. Nothing is executed."""
    if len(text) > 2000:
        return False
    try:
        ast.literal_eval(text.strip() or "None")
        return True
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        _value(ast.parse(text.strip(), mode="eval").body)
        return True
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False
