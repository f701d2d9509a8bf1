"""Which series names and labels a PromQL expression refers to.

Not a PromQL parser: it removes what cannot be a series name (strings, label matchers,
ranges, grouping label lists, Grafana variables, numbers, durations), then every identifier
left that is not a function, an aggregation or a keyword is a series name. Enough for the
expressions we write, and strict: an unknown function is reported rather than skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Names from the PromQL reference (functions, aggregation operators, keywords).
# fmt: off
FUNCTIONS = frozenset((
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
    "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round",
    "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc",
    "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time",
    "timestamp", "vector", "year",
))
AGGREGATIONS = frozenset((
    "avg", "bottomk", "count", "count_values", "group", "limit_ratio", "limitk", "max", "min",
    "quantile", "stddev", "stdvar", "sum", "topk",
))
KEYWORDS = frozenset((
    "and", "atan2", "bool", "by", "end", "group_left", "group_right", "ignoring", "inf", "nan",
    "offset", "on", "or", "start", "unless", "without",
))
# fmt: on

_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


class UnknownFunction(ValueError):
    pass


@dataclass(frozen=True)
class References:
    series: frozenset[str]
    labels: frozenset[str]  # in matchers and in by/without/on/ignoring lists


def references(expr: str) -> References:
    labels: set[str] = set()
    text = _STRING.sub('""', expr)
    # Grafana variables may stand for durations or label values; they name no series.
    text = _VARIABLE.sub("", text)
    for match in _GROUPING.finditer(text):
        labels.update(name.strip() for name in match.group(2).split(",") if name.strip())
    text = _GROUPING.sub(" ", text)
    for match in _MATCHERS.finditer(text):
        labels.update(_MATCHER_LABEL.findall(match.group(1)))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    series: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        lowered = name.lower()
        if lowered in KEYWORDS:
            continue
        if call:
            if lowered in FUNCTIONS or lowered in AGGREGATIONS:
                continue
            raise UnknownFunction(f"{name}( is not a PromQL function: {expr!r}")
        if lowered in AGGREGATIONS:  # `sum by (x) (...)`: the list was removed above
            continue
        series.add(name)
    return References(frozenset(series), frozenset(labels))
