"""The Lua scripts, loaded from the package's ``.lua`` files and run by SHA.

Each script is ``common.lua`` (shared functions) followed by its own file; its SHA1 is that
text's, so a changed file is a new script and never mixes with an old one cached in Redis.
``EVALSHA`` runs it; a ``NOSCRIPT`` answer (Redis restarted, ``SCRIPT FLUSH``, a failover)
loads the text once and runs it again. Every file names the script version and the key
layout it was written for (the ``limits`` library's convention); loading refuses a file of
another version, so code and scripts never disagree about the keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = ["LAYOUT", "NAMES", "SCRIPT_VERSION", "Script", "Scripts", "load_scripts"]

#: The scripts' version: bump it with any change to what a script does.
SCRIPT_VERSION: Final = 2
#: The key layout's version: in every data key (``{prefix}:{LAYOUT}:...``) and in ``{prefix}:layout``.
LAYOUT: Final = 1
NAMES: Final = ("reserve", "end", "expire", "mark", "admin", "read", "probe", "cas")
_HEADER: Final = f"-- spendgate redis ledger: script version {SCRIPT_VERSION}, key layout {LAYOUT}"


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    text: str
    sha: str


@dataclass(frozen=True, slots=True)
class Scripts:
    reserve: Script
    end: Script
    expire: Script
    mark: Script
    admin: Script
    read: Script
    probe: Script
    cas: Script


def _read(name: str) -> str:
    text = resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if not text.startswith(_HEADER):
        raise RuntimeError(f"spendgate: {name}.lua is not script version {SCRIPT_VERSION}, layout {LAYOUT}")
    return text


def load_scripts() -> Scripts:
    common = _read("common")
    scripts: dict[str, Script] = {}
    for name in NAMES:
        text = _read(name) if name == "cas" else common + "\n" + _read(name)
        scripts[name] = Script(
            name, text, hashlib.sha1(text.encode()).hexdigest()
        )  # Redis names scripts by SHA1
    return Scripts(**scripts)
