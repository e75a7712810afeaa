"""What the benchmark reports: medians per workload and contender, the ratios that
matter, a table on the terminal, Markdown, JSON and a PNG chart."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ._runner import Measurement

#: The synchronous baseline.
FLOOR: Final = "sqlite3"

#: Where ``--markdown FILE`` writes into an existing file: between these two lines.
MARKERS: Final = {
    "results": ("<!-- litepool-bench:results -->", "<!-- /litepool-bench:results -->"),
    "sweep": ("<!-- litepool-bench:sweep -->", "<!-- /litepool-bench:sweep -->"),
}


@dataclass(slots=True)
class Summary:
    """The medians of one workload against one contender over every round."""

    workload: str
    contender: str
    status: str
    detail: str = ""
    rounds: int = 0
    ops_per_second: float = math.nan
    ops_min: float = math.nan
    ops_max: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    errors: dict[str, int] = field(default_factory=dict)
    #: For the transfers: True if the total was kept in every round.
    kept: bool | None = None
    #: For the transfers: how the total changed in each round where it was not kept.
    drift: list[int] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def kept_text(self) -> str:
        if self.kept is None:
            return ""
        if self.kept:
            return "kept"
        drift = ", ".join(f"{change:+,}" for change in self.drift)
        return f"NOT KEPT ({drift})"

    def errors_text(self, limit: int = 2) -> str:
        if not self.errors:
            return "0"
        parts = [f"{count:,} {kind}" for kind, count in list(self.errors.items())[:limit]]
        if len(self.errors) > limit:
            parts.append(f"+{len(self.errors) - limit} kinds")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "contender": self.contender,
            "status": self.status,
            "detail": self.detail,
            "rounds": self.rounds,
            "ops_per_second": _json_number(self.ops_per_second),
            "ops_per_second_min": _json_number(self.ops_min),
            "ops_per_second_max": _json_number(self.ops_max),
            "p50_ms": _json_number(self.p50_ms),
            "p99_ms": _json_number(self.p99_ms),
            "errors": self.errors,
            "total_kept": self.kept,
            "total_drift": self.drift,
        }


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _median(values: Iterable[float]) -> float:
    present = [value for value in values if not math.isnan(value)]
    return statistics.median(present) if present else math.nan


def _rates(runs: Iterable[Measurement]) -> list[float]:
    """Operations per second of the runs that ran without error: what every median of
    the results and every ratio is taken over."""
    return [run.ops_per_second for run in runs if run.ok]


def summarize(measurements: Sequence[Measurement]) -> list[Summary]:
    """One summary per (workload, contender), in the order they first ran."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for measurement in measurements:
        groups.setdefault((measurement.workload, measurement.contender), []).append(measurement)
    summaries = []
    for (workload, contender), runs in groups.items():
        ok = [run for run in runs if run.ok]
        summary = Summary(workload, contender, status="ok", rounds=len(ok))
        if not ok:
            summary.status = runs[0].status
            summary.detail = runs[0].detail
        elif len(ok) < len(runs):
            failed = next(run for run in runs if not run.ok)
            summary.detail = f"{len(runs) - len(ok)} of {len(runs)} rounds failed: {failed.detail}"
        if ok:
            rates = _rates(ok)
            summary.ops_per_second = _median(rates)
            summary.ops_min = min(rates)
            summary.ops_max = max(rates)
            summary.p50_ms = _median(run.p50_ms for run in ok)
            summary.p99_ms = _median(run.p99_ms for run in ok)
        errors: Counter[str] = Counter()
        for run in runs:
            errors.update(run.errors)
        summary.errors = dict(errors.most_common())
        checked = [run for run in ok if run.total_kept is not None]
        if checked:
            summary.kept = all(run.total_kept for run in checked)
            summary.drift = [
                (run.total_after or 0) - (run.total_before or 0)
                for run in checked
                if not run.total_kept
            ]
        summaries.append(summary)
    return summaries


# -- ratios -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ratio:
    """Throughput of ``subject`` over ``baseline`` on one workload: the ratio of their
    median operations per second (the medians of the results table), with the lowest and
    the highest per-round ratio beside it (the two ran back to back within each round)."""

    subject: str
    baseline: str
    workload: str
    #: median(subject's ops/s) / median(baseline's ops/s), each over its rounds run without error.
    value: float
    #: The lowest and the highest ratio within one round, over the rounds both ran.
    low: float
    high: float
    #: Rounds in which both ran without error: what ``low`` and ``high`` are taken over.
    rounds: int
    as_percent: bool = False

    def _format(self, value: float) -> str:
        return f"{value:.1%}" if self.as_percent else f"{value:.2f}x"

    def text(self) -> str:
        """``2.13x (1.98-2.30)`` or ``38.2% (36.0-40.1%)``; the spread only when it spans
        two rounds or more."""
        if math.isnan(self.value):
            return "n/a"
        text = self._format(self.value)
        if self.rounds < 2 or math.isnan(self.low):
            return text
        if self.as_percent:
            return f"{text} ({self.low * 100:.1f}-{self.high:.1%})"
        return f"{text} ({self.low:.2f}-{self.high:.2f})"

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "baseline": self.baseline,
            "workload": self.workload,
            "ratio": _json_number(self.value),
            "ratio_min": _json_number(self.low),
            "ratio_max": _json_number(self.high),
            "rounds": self.rounds,
            "as_percent": self.as_percent,
        }


def ratio(
    measurements: Sequence[Measurement],
    subject: str,
    baseline: str,
    workload: str,
    *,
    as_percent: bool = False,
) -> Ratio:
    """``subject`` over ``baseline`` on ``workload``: n/a unless both ran without error
    at least once and the baseline did some work."""
    by_round: dict[int, dict[str, float]] = {}
    for run in measurements:
        if run.workload == workload and run.contender in (subject, baseline) and run.ok:
            by_round.setdefault(run.round, {})[run.contender] = run.ops_per_second
    top = _median(rates[subject] for rates in by_round.values() if subject in rates)
    bottom = _median(rates[baseline] for rates in by_round.values() if baseline in rates)
    value = top / bottom if bottom > 0 else math.nan
    per_round = [
        rates[subject] / rates[baseline]
        for rates in by_round.values()
        if subject in rates and baseline in rates and rates[baseline] > 0
    ]
    low = min(per_round, default=math.nan)
    high = max(per_round, default=math.nan)
    return Ratio(subject, baseline, workload, value, low, high, len(per_round), as_percent)


def key_ratios(measurements: Sequence[Measurement]) -> list[Ratio]:
    """The comparisons the benchmark exists for (those whose contenders both ran)."""
    workloads = list(dict.fromkeys(run.workload for run in measurements))
    pairs: list[tuple[str, str, str, bool]] = []
    for workload in workloads:
        for subject in ("litepool-asyncio", "litepool-checkouts-asyncio"):
            pairs.append((subject, "aiosqlite-shared", workload, False))
    for subject in ("litepool-asyncio", "litepool-trio"):
        pairs.append((subject, "aiosqlitepool", "point-reads", False))
    for workload in workloads:
        for way in ("litepool", "litepool-checkouts"):
            pairs.append((f"{way}-trio", f"{way}-asyncio", workload, False))
    for subject in ("litepool-asyncio", "litepool-trio"):
        pairs.append((subject, FLOOR, "point-reads", True))
    # The run_write() transfer against the same function run by plain sqlite3.
    pairs.append(("litepool-asyncio", FLOOR, "transfers", True))
    ratios = [
        ratio(measurements, subject, baseline, workload, as_percent=as_percent)
        for subject, baseline, workload, as_percent in pairs
    ]
    return [item for item in ratios if not math.isnan(item.value)]


RATIOS_CAPTION: Final = (
    "ratio of the median operations per second in the table above; in brackets the "
    "lowest and the highest ratio within one round, the two having run back to back"
)


# -- the NOT KEPT note --------------------------------------------------------------------


def not_kept_note(summaries: Iterable[Summary]) -> str | None:
    """What ``NOT KEPT`` means, to print under a results table that shows it; None when
    no row shows it."""
    if not any(summary.kept is False for summary in summaries):
        return None
    return (
        "NOT KEPT: the contender broke the workload's invariant in at least one round. "
        "For transfers: the sum of all balances changed, so updates were lost (in "
        "parentheses, how the total drifted in each such round). Its rate is not "
        "comparable with the others': it did not do the same work."
    )


# -- text -----------------------------------------------------------------------------------


def _num(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value < 1:
        return f"{value:.3f}"
    if value < 100:
        return f"{value:.2f}"
    return f"{value:,.0f}"


def _rate_cell(summary: Summary) -> str:
    if summary.status != "ok":
        return summary.status
    return _num(summary.ops_per_second)


def results_rows(summaries: Sequence[Summary]) -> list[list[str]]:
    """Header and rows of the results table."""
    rows = [["workload", "contender", "ops/s", "p50 ms", "p99 ms", "errors", "total"]]
    previous = None
    for summary in summaries:
        rows.append(
            [
                summary.workload if summary.workload != previous else "",
                summary.contender,
                _rate_cell(summary),
                _ms(summary.p50_ms),
                _ms(summary.p99_ms),
                summary.errors_text() if summary.status == "ok" else summary.detail,
                summary.kept_text(),
            ]
        )
        previous = summary.workload
    return rows


def ratio_rows(ratios: Sequence[Ratio]) -> list[list[str]]:
    rows = [["comparison", "workload", "ratio (lowest-highest round)"]]
    for item in ratios:
        what = (
            f"{item.subject} as % of {item.baseline}"
            if item.as_percent
            else f"{item.subject} / {item.baseline}"
        )
        rows.append([what, item.workload, item.text()])
    return rows


def markdown_table(rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    header, *body = rows
    align = ["---:" if index in right else "---" for index in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body)
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    packages = machine.get("packages", {})
    installed = ", ".join(f"{name} {version}" for name, version in packages.items() if version)
    cpu = machine.get("cpu_model") or "unknown CPU"
    cpus = f"{machine.get('cpus')} CPUs"
    usable = machine.get("usable_cpus")
    if usable is not None and usable != machine.get("cpus"):
        cpus += f", {usable} usable by this process"
    line = (
        f"{cpus} ({cpu}), {machine.get('platform')}, "
        f"{machine.get('python')}, SQLite {machine.get('sqlite')}; {installed}"
    )
    trip = machine.get("thread_round_trip_us")
    if trip is not None:
        line += f"; bare event loop → thread → event loop round trip: {trip:,.0f} µs (median)"
    return line


def results_markdown(data: dict[str, Any]) -> str:
    """The Markdown fragment for the results: command, machine, table, ratios."""
    measurements = [_measurement(item) for item in data["measurements"]]
    summaries = summarize(measurements)
    config = data["config"]
    lines = [
        f"Measured with `{data['command']}` on {data['started']}:",
        "",
        f"- machine: {machine_line(data['machine'])}",
        f"- database: {data['database']}",
        f"- {_plural(config['rounds'], 'round')} of {config['seconds']:g} s per workload and "
        "contender; "
        "medians over the rounds",
        "",
        markdown_table(results_rows(summaries), right=(2, 3, 4)),
    ]
    note = not_kept_note(summaries)
    if note is not None:
        lines += ["", note]
    lines += [
        "",
        f"Ratios ({RATIOS_CAPTION}):",
        "",
        markdown_table(ratio_rows(key_ratios(measurements)), right=(2,)),
    ]
    return "\n".join(lines)


def _measurement(item: dict[str, Any]) -> Measurement:
    fields = set(Measurement.__dataclass_fields__)
    values = {key: value for key, value in item.items() if key in fields}
    for name in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"):
        if values.get(name) is None:
            values[name] = math.nan
    return Measurement(**values)


def write_markdown(path: str, fragment: str, section: str) -> None:
    """Put ``fragment`` between the section's markers in ``path`` if the file has them;
    otherwise add it, between the markers, at the end of the file (creating it if need
    be), so that the next run replaces it in place."""
    begin, end = MARKERS[section]
    block = f"{begin}\n{fragment}\n{end}"
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        text = ""
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start != -1 else -1
    if start != -1 and stop != -1:
        text = text[:start] + block + text[stop + len(end) :]
    elif text.strip():
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = block + "\n"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_clean(data), handle, indent=1, allow_nan=False)
        handle.write("\n")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


# -- the terminal -------------------------------------------------------------------------


class RichProgress:
    """A progress bar on standard error."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            refresh_per_second=4,
            transient=False,
        )
        self._task: Any = None

    def start(self, total: int, title: str) -> None:
        self._progress.start()
        self._task = self._progress.add_task(title, total=total)

    def running(self, description: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, description=description)

    def advance(self) -> None:
        if self._task is not None:
            self._progress.advance(self._task)

    def stop(self) -> None:
        if self._task is not None:
            self._progress.update(self._task, description="done")
        self._progress.stop()


class PlainProgress:
    """Progress as plain lines on standard error (``--no-progress`` or no ``rich``)."""

    def __init__(self, quiet: bool = False) -> None:
        self._quiet = quiet
        self._done = 0
        self._total = 0

    def start(self, total: int, title: str) -> None:
        self._total = total

    def running(self, description: str) -> None:
        if not self._quiet:
            print(f"[{self._done}/{self._total}] {description}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self._done += 1

    def stop(self) -> None:
        pass


def print_table(title: str, rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
    """A table on standard output (``rich`` if installed, else plain columns)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            cells = (
                cell.rjust(width) if index in right else cell.ljust(width)
                for index, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
            print(("  " + "  ".join(cells)).rstrip())
        return
    table = Table(title=title, title_justify="left", show_lines=False)
    header, *body = rows
    for index, name in enumerate(header):
        table.add_column(name, justify="right" if index in right else "left")
    for row in body:
        style = "bold red" if any("NOT KEPT" in cell for cell in row) else None
        table.add_row(*row, style=style)
    # Wide enough that no contender's name or comparison is cut or wrapped.
    needed = sum(max(len(row[column]) for row in rows) + 3 for column in range(len(header))) + 1
    Console(width=max(100, Console().width, needed)).print(table)


def print_results(title: str, summaries: Sequence[Summary], ratios: Sequence[Ratio]) -> None:
    """The results table on standard output, what NOT KEPT means if a row shows it, and
    the ratios."""
    print_table(title, results_rows(summaries), right=(2, 3, 4))
    note = not_kept_note(summaries)
    if note is not None:
        print(note)
    if ratios:
        print_table(f"ratios: {RATIOS_CAPTION}", ratio_rows(ratios), right=(2,))


# -- charts -------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def results_chart(path: str, data: dict[str, Any]) -> None:
    """Median operations per second per contender, one panel per workload, with the
    range over the rounds as whiskers."""
    plt = _pyplot()
    measurements = [_measurement(item) for item in data["measurements"]]
    summaries = summarize(measurements)
    workloads = list(dict.fromkeys(summary.workload for summary in summaries))
    contenders = list(dict.fromkeys(summary.contender for summary in summaries))
    columns = 2 if len(workloads) > 1 else 1
    rows = math.ceil(len(workloads) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(7 * columns, 0.42 * len(contenders) * rows + 1.6 * rows)
    )
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    colours = plt.get_cmap("tab10")
    by_key = {(summary.workload, summary.contender): summary for summary in summaries}
    for axis, workload in zip(flat, workloads, strict=False):
        names, values, lows, highs, labels, colour_list = [], [], [], [], [], []
        for index, contender in enumerate(contenders):
            summary = by_key.get((workload, contender))
            if summary is None:
                continue
            names.append(contender)
            ok = summary.status == "ok"
            value = summary.ops_per_second if ok else 0.0
            values.append(value)
            lows.append(value - summary.ops_min if ok else 0.0)
            highs.append(summary.ops_max - value if ok else 0.0)
            label = _num(value) if ok else summary.status
            if summary.kept is False:
                label += f"  total {summary.kept_text()}"
            labels.append(label)
            colour_list.append(colours(index % 10))
        positions = list(range(len(names)))
        # The synchronous floor is often many times faster than every async contender:
        # scale the panel to the async contenders and cut the floor's bar at the edge.
        reach = [
            value + high
            for name, value, high in zip(names, values, highs, strict=True)
            if name != FLOOR
        ]
        top = max([*reach, 1.0])
        limit = top * 1.35
        for index, name in enumerate(names):
            if name == FLOOR and values[index] > limit:
                labels[index] += " (bar cut)"
                values[index] = limit
                lows[index] = highs[index] = 0.0
        axis.barh(positions, values, xerr=[lows, highs], color=colour_list, capsize=2, alpha=0.9)
        axis.set_yticks(positions, names, fontsize=8)
        axis.invert_yaxis()
        axis.set_title(workload, fontsize=10)
        axis.set_xlabel("operations per second (median; whiskers: min-max)", fontsize=8)
        axis.tick_params(axis="x", labelsize=7)
        axis.set_xlim(0, limit)
        for position, value, high, label in zip(positions, values, highs, labels, strict=True):
            colour = "red" if "NOT KEPT" in label else "black"
            if label.endswith("(bar cut)"):
                axis.text(
                    limit * 0.98,
                    position,
                    label,
                    va="center",
                    ha="right",
                    fontsize=7,
                    color="white",
                    fontweight="bold",
                )
            else:
                axis.text(
                    value + high + top * 0.02,
                    position,
                    label,
                    va="center",
                    fontsize=7,
                    color=colour,
                )
    for axis in flat[len(workloads) :]:
        axis.set_visible(False)
    note = not_kept_note(summaries)
    if note is not None:
        figure.text(0.01, 0.005, textwrap.fill(note, 160), fontsize=7, color="red", va="bottom")
    config = data["config"]
    figure.suptitle(
        f"litepool bench: {_plural(config['rounds'], 'round')} x {config['seconds']:g} s, "
        f"{data['machine'].get('cpus')} CPUs, {data['machine'].get('python')}, "
        f"SQLite {data['machine'].get('sqlite')}",
        fontsize=10,
    )
    # Room for the title and the note, which tight_layout does not place.
    height = figure.get_figheight()
    figure.tight_layout(rect=(0, 0.5 / height if note is not None else 0, 1, 1 - 0.3 / height))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def ensure_dir(path: str) -> None:
    os.makedirs(path, exist_ok=True)
