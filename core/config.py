"""Config checks shared by every typed config (DrQ-v2, MBPO, world-model training, DreamerV3)."""

from __future__ import annotations


def coerce_ints(obj: object, names: tuple[str, ...], prefix: str = "") -> None:
    """Makes the dataclass fields `names` of `obj` ints (integral floats such as 1e5 are accepted).

    Raises:
        ValueError: a value is not a whole number (one line naming the setting).
    """
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{prefix}{name}={value!r} must be a whole number")  # noqa: TRY004 (a config error)
        setattr(obj, name, value)
