"""What a model file would run if it were loaded: looked at before anything loads it.

Three ways a file can carry code into the process, each refused here by default:

- **Pickles.** ``torch.load(weights_only=False)`` — and ``torch.export.load`` for a
  ``.pt2``'s sample inputs (after a weights-only try), its ``use_pickle`` weights and
  constants and its opaque objects — runs whatever a pickle's GLOBAL/REDUCE opcodes name.
  A pickled entry passes only if torch's weights-only unpickler would take it: every
  class or function it names is on torch's allowlist (tensors, containers, dtypes, and
  classes a trusted package registered as safe, such as torchao's quantized tensors). The
  opcodes are read statically (``pickletools``), never executed; INST and EXT opcodes
  (which torch.save never writes) and STACK_GLOBALs whose names cannot be read fail closed.
- **Symbolic shapes.** ``torch.export.load`` parses each ``expr_str`` of a program's JSON
  with ``sympy.sympify``, which is ``eval``: ``Symbol.__new__.__globals__[...]`` reaches
  ``os.system``. An expression passes only if it is arithmetic over shape symbols (``s0``,
  ``u3``) and torch's sympy functions (``FloorDiv``, ``Max`` ...): no attribute access, no
  subscripts, no strings.
- **Compiled libraries.** An AOTInductor package (``data/aotinductor/...``) holds a shared
  library that ``torch.export.load`` dlopens: native code. ptflow loads only the packages
  it compiled itself in this run; in a model file they are refused.

``pt2_problems`` audits a ``.pt2`` archive entry by entry (JSON, short text records and
raw tensor bytes are data; anything else must be a weights-only pickle);
``checkpoint_problem`` audits a ``torch.save`` zip's ``data.pkl``. Both return what is
wrong in words naming the entry, or nothing; callers add the opt-in
(``model.trust_pickle=true``) to their message.
"""
from __future__ import annotations

import importlib
import io
import json
import pickletools
import re
import sys
import zipfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

TRUSTED_PACKAGES = ("torch", "torchao")   # imported when a pickle names them: they register safe classes
LOAD_CHECK_BYTES = 1 << 20   # pickled entries up to this size (sample inputs) are also loaded weights-only
TEXT_RECORD = re.compile(r"[A-Za-z0-9._-]{1,64}\n?")
TEXT_RECORD_NAMES = frozenset({"version", "archive_format", "archive_version", "byteorder", "serialization_id",
                               ".format_version", ".storage_alignment"})
PAYLOAD_CONFIG = re.compile(r"^data/(weights|constants)/[^/]+_config\.json$")
RAW_PREFIXES = ("weight_", "tensor_")   # records torch reads as raw bytes when use_pickle is false
AOTI_DIR = "data/aotinductor/"
STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
                        "BINUNICODE8"})
MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
# What torch's printer writes into an expr_str (sympy's srepr): shape symbols, numbers, its sympy
# functions, and string literals only of a symbol's name or a number.
EXPR_TOKEN = re.compile(r"\s+|\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?|[A-Za-z_][A-Za-z0-9_]*|\*\*|//|"
                        r"==|!=|<=|>=|'(?:[a-z]+\d+|[-+]?[\d.]+(?:[eE][-+]?\d+)?)'|[-+*/%(),<>&|~^=]")
SYMBOL = re.compile(r"^[a-z]+\d+$")                       # s0, u3, zuf0: never a sympy global
OPAQUE_FUNCTION = re.compile(r"^OpaqueUnaryFn_[a-z0-9]+$")
EXPR_FUNCTIONS = frozenset({
    # torch.utils._sympy.functions (the deserializer's sympy_functions)
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
    # sympy's own, as str(expr) prints them
    "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Xor", "ITE", "Piecewise",
    "floor", "ceiling", "sqrt", "Pow", "Mul", "Add", "Rational", "Integer", "Float", "oo", "zoo", "nan",
    "True", "False", "true", "false", "pi", "E", "exp", "log",
    # Symbol('s0', positive=True, integer=True): a symbol with its assumptions
    "Symbol", "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "nonzero",
    "extended_real", "extended_positive", "extended_nonnegative", "commutative", "rational", "even", "odd",
    "precision", "evaluate",   # Float('2.5', precision=53)
})
MAX_EXPR_CHARS = 2000


def expression_problem(text: str) -> str | None:
    """Why `text` is not a plain shape expression that sympify may parse, or None."""
    if len(text) > MAX_EXPR_CHARS:
        return f"a {len(text)}-character shape expression (more than {MAX_EXPR_CHARS})"
    position = 0
    while position < len(text):
        match = EXPR_TOKEN.match(text, position)
        if match is None:
            return f"the shape expression {text[:80]!r} holds {text[position:position + 12]!r}, which is not arithmetic"
        token = match.group()
        if token[0].isalpha() or token[0] == "_":
            if not (SYMBOL.match(token) or token in EXPR_FUNCTIONS or OPAQUE_FUNCTION.match(token)):
                return f"the shape expression {text[:80]!r} names {token!r}, neither a shape symbol nor a sympy function"
        position = match.end()
    return None


def _expressions(node: Any) -> Iterator[str]:
    """Every expr_str in a program's JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr_str" and isinstance(value, str):
                yield value
            else:
                yield from _expressions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _expressions(value)


def pickle_globals(data: bytes) -> set[str]:
    """The ``module.name`` of every class or function a pickle stream names, read statically.
    Raises ValueError for what cannot be read statically (an unresolvable STACK_GLOBAL, an
    INST/OBJ-by-name or EXT opcode, a malformed stream): callers refuse the stream."""
    names: set[str] = set()
    strings: list[str] = []          # the string literals (or memo reads) pushed since the last other op
    memo: dict[int, Any] = {}
    next_memo = 0
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name == "GLOBAL":
            module, _, attribute = str(arg).partition(" ")
            names.add(f"{module}.{attribute}")
        elif name == "STACK_GLOBAL":
            if len(strings) < 2:
                raise ValueError("a STACK_GLOBAL whose module and name are not literal strings")
            names.add(f"{strings[-2]}.{strings[-1]}")
        elif name == "INST" or name.startswith("EXT"):
            raise ValueError(f"a {name} opcode, which torch.save never writes")
        if name in STRING_OPS:
            strings.append(str(arg))
        elif name in MEMO_GET:
            value = memo.get(int(arg))
            strings = strings + [value] if isinstance(value, str) else []
        elif name in MEMO_PUT or name == "MEMOIZE":
            index = int(arg) if name in MEMO_PUT else next_memo
            memo[index] = strings[-1] if strings else None
            next_memo = max(next_memo, index + 1)   # memoizing leaves the stack as it is
        else:
            strings = []
    return names


def _allowed_globals() -> set[str]:
    """Names torch's weights-only unpickler accepts: its own allowlist and safe globals that
    packages registered (torchao's tensor subclasses)."""
    from torch import _weights_only_unpickler as unpickler

    allowed = set(unpickler._get_allowed_globals())
    user = getattr(unpickler, "_get_user_allowed_globals", None)
    return allowed | set(user() if user else ())


def _import_trusted(names: Iterable[str]) -> None:
    """Import the trusted packages a pickle names, so the safe classes they register are known."""
    for top in {n.split(".", 1)[0] for n in names} & set(TRUSTED_PACKAGES):
        if top not in sys.modules:
            try:
                from ptflow.inputs.quiet import quiet_torchao

                with quiet_torchao():
                    importlib.import_module(top)
            except Exception:   # not installed: its classes stay unknown, so refused
                pass


def _pickle_problem(data: bytes) -> str | None:
    """Why a raw pickle stream is not weights-only safe, or None."""
    try:
        names = pickle_globals(data)
    except Exception as error:   # ValueError from pickle_globals, or a malformed stream
        return f"its pickle cannot be read without running it ({error})"
    _import_trusted(names)
    unsafe = sorted(names - _allowed_globals())
    if unsafe:
        return "it unpickles " + ", ".join(unsafe[:5]) + (f" (+{len(unsafe) - 5} more)" if len(unsafe) > 5 else "")
    return None


def checkpoint_problem(handle: IO[bytes], size: int | None = None) -> str | None:
    """Why the torch.save zip in `handle` would run code when unpickled (not weights-only
    safe), or None. Reads its data.pkl; loads it weights-only too when `size` is small."""
    try:
        with zipfile.ZipFile(handle) as archive:
            pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
            if len(pickles) != 1:
                return f"it is not a torch.save checkpoint ({len(pickles)} data.pkl entries)"
            problem = _pickle_problem(archive.read(pickles[0]))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"it is not a readable torch.save zip ({type(error).__name__}: {error})"
    if problem is None and size is not None and size <= LOAD_CHECK_BYTES:
        import torch

        handle.seek(0)
        try:
            torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as error:
            return f"torch's weights-only unpickler refuses it ({type(error).__name__}: {str(error)[:160]})"
    return problem


def _entry_problem(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, raw: set[str]) -> str | None:
    """Why one archive entry (`name` without the archive's top folder) is not plain data."""
    base = name.rsplit("/", 1)[-1]
    if name in raw or name.startswith("extra/"):
        return None   # raw tensor bytes; extra files are read as text
    if base in TEXT_RECORD_NAMES and info.file_size <= 65:
        text = archive.read(info).decode("ascii", errors="replace")
        return None if TEXT_RECORD.fullmatch(text) else f"a record that should be a short word holds {text[:20]!r}"
    if base.endswith(".json"):
        try:
            document = json.loads(archive.read(info).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            return f"not valid JSON ({error})"
        return next(filter(None, map(expression_problem, _expressions(document))), None)
    with archive.open(info) as handle:
        return checkpoint_problem(handle, info.file_size)


def _raw_records(archive: zipfile.ZipFile, names: dict[str, zipfile.ZipInfo]) -> set[str]:
    """The weight/constant records torch reads as raw tensor bytes (never unpickled)."""
    raw: set[str] = set()
    pickled: set[str] = set()
    for name, info in names.items():
        if not PAYLOAD_CONFIG.match(name):
            continue
        try:
            entries = json.loads(archive.read(info))["config"].values()
        except (ValueError, KeyError, TypeError, AttributeError):
            continue   # reported as invalid JSON (or left to torch) by the entry check
        folder = name.rsplit("/", 1)[0]
        for entry in entries:
            path = entry.get("path_name") if isinstance(entry, dict) else None
            if not isinstance(path, str) or "/" in path:
                continue
            if entry.get("use_pickle") is False and path.startswith(RAW_PREFIXES):
                raw.add(f"{folder}/{path}")
            else:
                pickled.add(f"{folder}/{path}")
    return raw - pickled


def pt2_problems(archive: zipfile.ZipFile, limit: int = 3) -> list[str]:
    """'<entry>: why' for each entry of a .pt2 archive that would run code when
    torch.export.load reads it (at most `limit`); [] when it is all data."""
    names = {}
    for info in archive.infolist():
        if not info.is_dir():
            top, _, rest = info.filename.partition("/")
            names[rest or top] = info
    aoti = sorted(n for n in names if n.startswith(AOTI_DIR))
    problems = [f"{aoti[0]}: a compiled AOTInductor library (torch.export.load would load its native code); "
                "ptflow loads .pt2 programs, not AOTInductor packages"] if aoti else []
    raw = _raw_records(archive, names)
    for name, info in names.items():
        if len(problems) >= limit:
            break
        if name.startswith(AOTI_DIR):
            continue
        problem = _entry_problem(archive, info, name, raw)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def audit_pt2_bytes(data: bytes) -> list[str]:
    """pt2_problems of an archive held in memory (what is audited is what gets loaded)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return pt2_problems(archive)
    except zipfile.BadZipFile as error:
        return [f"not a zip archive ({error})"]
