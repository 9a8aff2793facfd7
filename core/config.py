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


def parse_key_values(cls: type, args: list[str], dotted: tuple[str, ...] = ()) -> dict[str, object]:
    """`["key=value", ...]` -> keyword arguments of the dataclass `cls`, each converted to its field's type
    (`int`, `float`, `bool`: true/false/1/0, a `... | None` field: null/none/empty -> None, else the string).

    Args:
        dotted: fields written with a dot on the command line (`fvd.i3d` for the field `fvd_i3d`).

    Raises:
        ValueError: an argument without `=`, an unknown key (the message lists the keys) or a bad value.
    """
    import dataclasses

    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    spelled = {name.replace("_", ".") if name.replace("_", ".") in dotted else name: name for name in fields}
    values: dict[str, object] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("+-")
        name = spelled.get(key, key if key in fields else None)
        if not sep or name is None:
            raise ValueError(f"unknown argument {arg!r}; use key=value with keys {', '.join(spelled)}")
        kind = fields[name]
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{key}={value!r} must be true or false")
            values[name] = value.lower() in ("true", "1")
        elif kind in ("int", "float"):
            try:
                values[name] = int(value) if kind == "int" else float(value)
            except ValueError:
                raise ValueError(f"{key}={value!r} must be {'a whole number' if kind == 'int' else 'a number'}"
                                 ) from None
        else:
            values[name] = None if kind.endswith("None") and value.lower() in ("null", "none", "") else value
    return values
