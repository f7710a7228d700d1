"""Modality names: every layout maps its own spelling onto one medtrans name, so plans agree."""

from __future__ import annotations

#: spelling found on disk (lower-case) -> medtrans name
ALIASES: dict[str, str] = {
    "t1": "t1", "t1w": "t1", "t1n": "t1", "t1-weighted": "t1",
    "t2": "t2", "t2w": "t2", "t2-weighted": "t2",
    "pd": "pd", "pdw": "pd",
    "flair": "flair", "t2f": "flair", "t2-flair": "flair", "t2flair": "flair",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1-gd": "t1ce", "t1post": "t1ce",
    "ct": "ct", "cbct": "cbct", "ldct": "ldct", "pet": "pet", "ldpet": "ldpet",
    "mr": "mr", "mri": "mr", "mra": "mra",
}

#: modality -> physical family; the family decides normalisation and units
_FAMILY = {"ct": "ct", "cbct": "ct", "ldct": "ct", "pet": "pet", "ldpet": "pet"}
UNITS = {"ct": "HU", "pet": "SUV", "mr": "a.u."}


def canonical(name: str) -> str:
    """The medtrans name for a spelling found on disk (unknown names are kept, lower-cased)."""
    key = name.strip().lower().replace(" ", "").replace("_", "")
    return ALIASES.get(key, ALIASES.get(name.strip().lower(), name.strip().lower()))


def is_known(name: str) -> bool:
    key = name.strip().lower()
    return key in ALIASES or key.replace("_", "") in ALIASES


def family(modality: str) -> str:
    """'ct' (Hounsfield units), 'pet' (uptake) or 'mr' (arbitrary units) for a medtrans name."""
    return _FAMILY.get(canonical(modality), "mr")


def units(modality: str) -> str:
    return UNITS[family(modality)]
