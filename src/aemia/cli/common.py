"""Small helpers shared by the CLI verbs."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """``"16,32,64"`` → ``[16, 32, 64]``; a clear error otherwise."""
    if text is None or text == "":
        return None
    try:
        return [int(t) for t in text.replace("x", ",").split(",") if t.strip()]
    except ValueError:
        from aemia.errors import InputError

        raise InputError(None, f"{what} must be comma-separated integers, got {text!r}") from None


def parse_labels(text: str | None) -> dict[int, str] | None:
    """``"5:liver,1:spleen"`` → ``{5: "liver", 1: "spleen"}``."""
    if not text:
        return None
    from aemia.errors import InputError

    out: dict[int, str] = {}
    for item in text.split(","):
        key, _, name = item.partition(":")
        try:
            out[int(key)] = name or f"label_{key}"
        except ValueError:
            raise InputError(None, f"--labels items must look like 5:liver, got {item!r}") from None
    return out
