"""Command-line helpers shared by the entry points: numeric flags with a documented range,
refused with a one-line message (argparse's exit code 2) before any work; help that shows
every default."""
import argparse
import math


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose refusals are one line (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default in its help (a flag whose
    default depends on other inputs, None here, says it in its own words)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse `type` that parses `kind` (int or float) and refuses values outside the
    range, and NaN; `.range` is the range in words, shown in --help by `ranged_help`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is outside {parse.range}")
        return value

    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    parse.range = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_number(group, flag: str, kind, low=None, high=None, low_open=False, high_open=False, help: str = "",
               **kwargs):
    """group.add_argument for a numeric flag, its range appended to the help."""
    parse = number(kind, low, high, low_open, high_open)
    text = f"{help} (range {parse.range})" if help else f"range {parse.range}"
    return group.add_argument(flag, type=parse, help=text, **kwargs)


def some(names, most: int = 10) -> str:
    """The first `most` names for a message, and how many more there are."""
    names = [str(n) for n in names]
    more = f" ... ({len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more
