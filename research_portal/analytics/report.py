"""The ad's report as a PDF (docs/analytics.md, "Report (PDF)"): a file an analyst forwards to stakeholders
who never sign in, for the dashboard's filters.

Its numbers come from the dashboard's own functions (dashboard.py): `load_ad_readings` for the traces and
statistics, `ad_dashboard_payload` of those readings for the scorecard, key moments, summary, comparison,
totals and filters, so the PDF and the page never disagree. Drawn with matplotlib's object API (a Figure
per A4 page, written by the PDF backend into memory: no pyplot, whose global state is not safe in a threaded
web process, and no raster backend). Text is laid out here: wrapped to the page's width with the font's own
metrics, tables continued on the next page, a footer with the page number on every page.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path

import numpy as np

from research_portal.analytics.attention import RETENTION_COLOR, TURNED_TO_SCREEN
from research_portal.analytics.dashboard import AdReadings, ad_dashboard_payload, load_ad_readings
from research_portal.analytics.definitions import (
    ATTENTION,
    ATTENTION_THRESHOLD,
    EXPRESSIVENESS,
    MEASURE_LABELS,
)
from research_portal.analytics.figures import MEASURE_COLORS, N_COLOR, country_color, shared_range
from research_portal.analytics.services import Filters
from research_portal.analytics.stats import MeanEstimate
from research_portal.countries import country_label
from research_portal.studies.models import Ad


def _use_private_matplotlib_dir() -> None:
    """Matplotlib writes a font cache into its config directory (default ~/.config, ~/.cache): the
    container's user has a read-only home (docker/Dockerfile), where matplotlib would warn and build the
    cache anew in a fresh temporary folder in every process. Unless MPLCONFIGDIR is set, use one private
    folder per user under the temporary directory; it also keeps a user's matplotlibrc out of the report."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    path = Path(tempfile.gettempdir()) / f"facecode-matplotlib-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        owned = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
    except OSError:
        owned = False
    os.environ["MPLCONFIGDIR"] = str(path) if owned else tempfile.mkdtemp(prefix="facecode-matplotlib-")


_use_private_matplotlib_dir()  # before matplotlib is imported: it reads the directory at import

from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.textpath import text_to_path  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

# ---- the page ---------------------------------------------------------------------------------------------

PAGE_W, PAGE_H = 8.27, 11.69  # A4, inches
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 0.6, 0.6, 0.8  # the bottom margin holds the footer
CONTENT_W = PAGE_W - 2 * MARGIN_X
FONT = "DejaVu Sans"  # ships with matplotlib: the same glyphs and metrics on every machine
INK, MUTED, RULE, FAINT = "#1b1f24", "#5b6670", "#b9c0c8", "#e6e9ee"
BOX_FILL, TOTAL_FILL = "#f3f6f9", "#eef1f4"
SIGNIFICANT = (1.0, 179 / 255, 0.0, 0.22)  # figures.SIGNIFICANT_FILL
LINE_SPACING = 1.32  # line height / font size
CELL_PAD = 0.045  # inches around a table cell's text
SWATCH_W = 0.16  # a colour square and its gap before a cell's text
MAX_LEGEND_COUNTRIES = 24
MAX_MARKED_SECONDS = 120  # a longer trace is drawn as a line without a marker per second


@lru_cache(maxsize=16)
def _font(size: float, bold: bool) -> FontProperties:
    return FontProperties(family=FONT, size=size, weight="bold" if bold else "normal")


@lru_cache(maxsize=8192)
def _char_width_pt(char: str, size: float, bold: bool) -> float:
    width, _height, _descent = text_to_path.get_text_width_height_descent(char, _font(size, bold), False)
    return width


def text_width(text: str, size: float, bold: bool = False) -> float:
    """The text's width in inches (the glyphs' advances; kerning is a fraction of a percent of a line)."""
    return sum(_char_width_pt(char, size, bold) for char in text) / 72


def wrap(text: str, width: float, size: float, bold: bool = False) -> list[str]:
    """`text` in lines no wider than `width` inches: broken at spaces (a word longer than a line at its
    characters); each "\\n" starts a new line."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        # Runs of spaces count as one, none at the ends; a no-break space (U+00A0) never breaks.
        for word in [word for word in paragraph.split(" ") if word]:
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, size, bold) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = word
            while text_width(line, size, bold) > width and len(line) > 1:
                fits = (i for i in range(len(line) - 1, 0, -1) if text_width(line[:i], size, bold) <= width)
                cut = next(fits, 1)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def shorten(text: str, width: float, size: float) -> str:
    """One line of at most `width` inches, ending in "…" when cut."""
    if text_width(text, size) <= width:
        return text
    while text and text_width(text + "…", size) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def line_height(size: float) -> float:
    return size * LINE_SPACING / 72


@dataclass(frozen=True)
class Column:
    title: str
    width: float  # inches
    align: str = "left"


@dataclass(frozen=True)
class Row:
    cells: Sequence[str]
    swatch: str = ""  # a colour square before the first cell (a country's line colour)
    bold: bool = False
    fill: str = ""
    note: str = ""  # a line across every column under the row (a key moment's reason)


@dataclass
class Pages:
    """A4 pages filled top to bottom: each block goes where the last one ended, on a new page when it does not
    fit. Footers (page x of y) are added when every page exists."""

    footer: str
    figures: list[Figure] = field(default_factory=list)
    y: float = 0.0  # inches from the top of the current page

    def new_page(self) -> Figure:
        figure = Figure(figsize=(PAGE_W, PAGE_H))
        self.figures.append(figure)
        self.y = MARGIN_TOP
        return figure

    @property
    def page(self) -> Figure:
        return self.figures[-1] if self.figures else self.new_page()

    @property
    def room(self) -> float:
        return PAGE_H - MARGIN_BOTTOM - self.y

    def make_room(self, height: float) -> None:
        if not self.figures or (height > self.room and self.y > MARGIN_TOP):
            self.new_page()

    def space(self, height: float) -> None:
        self.y += height

    def put_text(
        self,
        x: float,
        y: float,
        text: str,
        size: float,
        *,
        bold: bool = False,
        color: str = INK,
        align: str = "left",
    ) -> None:
        """One line whose top is `y` inches below the page's top, `x` from its left edge."""
        self.page.text(
            x / PAGE_W,
            1 - y / PAGE_H,
            text,
            fontsize=size,
            fontfamily=FONT,
            fontweight="bold" if bold else "normal",
            color=color,
            ha=align,
            va="top",
            parse_math=False,  # "$5 off" is a title, not TeX
        )

    def text(
        self,
        text: str,
        size: float = 9,
        *,
        bold: bool = False,
        color: str = INK,
        indent: float = 0.0,
        after: float = 0.06,
        keep: int = 2,
    ) -> None:
        """A paragraph wrapped to the page's width; continued on the next page after `keep` lines or more."""
        lines = wrap(text, CONTENT_W - indent, size, bold)
        height = line_height(size)
        self.make_room(height * min(keep, len(lines)))
        for line in lines:
            self.make_room(height)
            self.put_text(MARGIN_X + indent, self.y, line, size, bold=bold, color=color)
            self.y += height
        self.y += after

    def text_height(self, text: str, size: float = 9, after: float = 0.06) -> float:
        return len(wrap(text, CONTENT_W, size)) * line_height(size) + after

    def heading(self, text: str, size: float = 12.5, before: float = 0.16, keep: float = 1.0) -> None:
        """A section title, on the same page as the `keep` inches of what follows it."""
        if self.figures and self.y > MARGIN_TOP:
            self.y += before
        self.make_room(self.text_height(text, size, 0.05) + keep)
        self.text(text, size, bold=True, after=0.05)

    def rule(self, x0: float, x1: float, y: float, color: str = RULE, width: float = 0.6) -> None:
        self.page.add_artist(
            Line2D(
                [x0 / PAGE_W, x1 / PAGE_W],
                [1 - y / PAGE_H, 1 - y / PAGE_H],
                transform=self.page.transFigure,
                color=color,
                linewidth=width,
            )
        )

    def box(self, x: float, y: float, width: float, height: float, fill: str, edge: str = "none") -> None:
        self.page.add_artist(
            Rectangle(
                (x / PAGE_W, 1 - (y + height) / PAGE_H),
                width / PAGE_W,
                height / PAGE_H,
                transform=self.page.transFigure,
                facecolor=fill,
                edgecolor=edge,
                linewidth=0.6,
                zorder=-1,
            )
        )

    def table(
        self, columns: Sequence[Column], rows: Sequence[Row], size: float = 8.0, pad: float = CELL_PAD
    ) -> None:
        """Rows under a bold header; a row that does not fit starts a new page, under the header again.
        `pad`: the space above and below a cell's text (CELL_PAD beside it)."""
        height, note_size = line_height(size), size - 0.8
        header = [wrap(column.title, column.width - 2 * CELL_PAD, size, True) for column in columns]
        header_h = max(len(lines) for lines in header) * height + 2 * pad
        right = MARGIN_X + sum(column.width for column in columns)

        def laid_out(row: Row) -> tuple[list[list[str]], list[str], float]:
            cells = []
            for index, (column, cell) in enumerate(zip(columns, row.cells, strict=True)):
                swatch = SWATCH_W if index == 0 and row.swatch else 0.0
                cells.append(wrap(str(cell), column.width - 2 * CELL_PAD - swatch, size, row.bold))
            note = wrap(row.note, right - MARGIN_X - 2 * CELL_PAD, note_size) if row.note else []
            row_h = max(len(lines) for lines in cells) * height + 2 * pad
            return cells, note, row_h + len(note) * line_height(note_size)

        def draw_header(continued: bool) -> None:
            if continued:
                self.put_text(MARGIN_X, self.y, "(continued)", size - 1, color=MUTED)
                self.y += line_height(size - 1)
            x = MARGIN_X
            for column, lines in zip(columns, header, strict=True):
                self.draw_cell(x, self.y + pad, column, lines, size, bold=True)
                x += column.width
            self.y += header_h
            self.rule(MARGIN_X, right, self.y, INK, 0.8)

        layouts = [laid_out(row) for row in rows]
        self.make_room(header_h + (layouts[0][2] if layouts else 0))
        draw_header(False)
        for row, (cells, note, row_h) in zip(rows, layouts, strict=True):
            if row_h > self.room:
                self.new_page()
                draw_header(True)
            if row.fill:
                self.box(MARGIN_X, self.y, right - MARGIN_X, row_h, row.fill)
            x = MARGIN_X
            for index, (column, lines) in enumerate(zip(columns, cells, strict=True)):
                swatch = row.swatch if index == 0 else ""
                self.draw_cell(x, self.y + pad, column, lines, size, bold=row.bold, swatch=swatch)
                x += column.width
            note_y = self.y + row_h - len(note) * line_height(note_size) - pad
            for line in note:
                self.put_text(MARGIN_X + CELL_PAD, note_y, line, note_size, color=MUTED)
                note_y += line_height(note_size)
            self.y += row_h
            self.rule(MARGIN_X, right, self.y, FAINT, 0.5)
        self.y += 0.08

    def draw_cell(
        self,
        x: float,
        y: float,
        column: Column,
        lines: list[str],
        size: float,
        *,
        bold: bool,
        swatch: str = "",
    ) -> None:
        left, right = x + CELL_PAD, x + column.width - CELL_PAD
        if swatch:
            side = size * 0.8 / 72
            self.box(left, y + 0.01, side, side, swatch)
            left += SWATCH_W
        for line in lines:
            if column.align == "right":
                self.put_text(right, y, line, size, bold=bold, align="right")
            else:
                self.put_text(left, y, line, size, bold=bold)
            y += line_height(size)

    def chart(self, height: float, draw: Callable[[Callable[..., object]], None]) -> None:
        """A block of `height` inches for charts: `draw(axes_at)` adds axes with
        axes_at(left, top, width, height) in inches within the block (left from the content's edge)."""
        self.make_room(height)
        page, top = self.page, self.y

        def axes_at(left: float, top_in: float, width: float, height_in: float, **kwargs):
            x0 = (MARGIN_X + left) / PAGE_W
            y0 = 1 - (top + top_in + height_in) / PAGE_H
            return page.add_axes((x0, y0, width / PAGE_W, height_in / PAGE_H), **kwargs)

        draw(axes_at)
        self.y += height

    def finish(self, metadata: dict) -> bytes:
        """Every page with its footer, as one PDF."""
        figures, self.figures = self.figures, []
        total = len(figures)
        buffer = io.BytesIO()
        with PdfPages(buffer, metadata=metadata) as pdf:
            for number in range(1, total + 1):
                # Each page dropped once written: no pyplot, so no figure manager holds it (nothing to close).
                figure = figures.pop(0)
                self.page_footer(figure, PAGE_H - MARGIN_BOTTOM + 0.3, f"Page {number} of {total}")
                pdf.savefig(figure)
        return buffer.getvalue()

    def page_footer(self, figure: Figure, y: float, page_label: str) -> None:
        size = 7.5
        left = shorten(self.footer, CONTENT_W - text_width(page_label, size) - 0.3, size)
        figure.add_artist(
            Line2D(
                [MARGIN_X / PAGE_W, (PAGE_W - MARGIN_X) / PAGE_W],
                [1 - (y - 0.06) / PAGE_H] * 2,
                transform=figure.transFigure,
                color=RULE,
                linewidth=0.5,
            )
        )
        for x, text, align in ((MARGIN_X, left, "left"), (PAGE_W - MARGIN_X, page_label, "right")):
            figure.text(
                x / PAGE_W,
                1 - y / PAGE_H,
                text,
                fontsize=size,
                fontfamily=FONT,
                color=MUTED,
                ha=align,
                va="top",
                parse_math=False,
            )


# ---- numbers as the dashboard writes them (static/analytics/dashboard.js) ---------------------------------


def fixed(value: float | None, digits: int = 3) -> str:
    """JavaScript's toFixed: halves round away from zero (6.25 -> "6.3", where Python's format says "6.2"),
    so the PDF shows the dashboard's digits; "—" without a value."""
    if value is None or not math.isfinite(value):
        return "—"
    value = 0.0 if value == 0 else value  # no "-0.000"
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def percent(share: float | None) -> str:
    return "—" if share is None else f"{fixed(100 * share, 1)} %"


def with_ci(mean: float | None, low: float | None, high: float | None) -> str:
    return f"{fixed(mean)} [{fixed(low)}, {fixed(high)}]"


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def place_label(code: str) -> str:
    """A summary row's country: "All", or the name beside the code."""
    return "All" if code == "All" else country_label("" if code == "unknown" else code)


def nan_array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in values], dtype=float)


# ---- what the report shows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportData:
    """The dashboard's readings and its payload, from one read of the rollups: the PDF shows what the page
    shows, for the same filters (the readings' own, once the dashboard settled the model version and
    measure)."""

    readings: AdReadings
    payload: dict

    @property
    def seconds(self) -> int:
        return self.readings.traces.seconds

    @property
    def attention_participants(self) -> np.ndarray:
        return self.readings.traces.attention_participants()

    @property
    def read_by_any_model(self) -> bool:
        return bool(self.readings.facets.model_versions)

    @property
    def has_readings(self) -> bool:
        return bool(self.payload["summary"])  # a participant with an analysed frame under these filters


def load_report_data(ad: Ad, filters: Filters) -> ReportData:
    readings = load_ad_readings(ad, filters)
    return ReportData(readings, ad_dashboard_payload(readings))


def filter_lines(filters: Filters, payload: dict) -> list[tuple[str, str]]:
    """The filters in words, as the dashboard's form offers them."""
    dates = "every day"
    if filters.date_from and filters.date_to:
        dates = f"{filters.date_from.isoformat()} to {filters.date_to.isoformat()}"
    elif filters.date_from:
        dates = f"from {filters.date_from.isoformat()}"
    elif filters.date_to:
        dates = f"until {filters.date_to.isoformat()}"
    comparison = payload["comparison"]
    if comparison:
        a, b = comparison["countries"]
        chosen = "chosen" if filters.compare else "the two with the most participants"
        compared = f"{country_label(a)} vs {country_label(b)} ({chosen}), {comparison['correction_label']}"
    else:
        compared = "none (needs participants from at least two countries)"
    norm_country = country_label(filters.norm_country) if filters.norm_country else "all participants"
    return [
        ("Countries", ", ".join(country_label(c) for c in filters.countries) or "all"),
        ("Devices", ", ".join(filters.devices) or "all"),
        ("Session dates (UTC)", dates),
        ("Min. face quality", "any" if filters.quality == 0 else f"≥ {filters.quality:g}"),
        ("Validated completes only", "yes" if filters.completed_only else "no"),
        (
            "Baseline",
            "baseline-corrected: each participant's own baseline is subtracted"
            if filters.baseline
            else "not baseline-corrected (raw scores)",
        ),
        ("Compared measure", MEASURE_LABELS[filters.measure]),
        ("Countries compared", compared),
        ("Norm", f"country: {norm_country}; category: {filters.norm_category or 'every category'}"),
        ("Model version", payload["model_version"] or "—"),
    ]


HOW_TO_READ = (
    "Lines and bands: each participant's frames are averaged within each second first; a line is the mean "
    "across participants, the shaded band around it its 95% confidence interval (t distribution, n − 1 "
    "degrees of freedom). A wide band means the mean is uncertain; seconds with fewer than 2 participants "
    "have no band.",
    "n: the number of participants behind each second (the grey bars under a chart). Participants, not "
    "frames, are the unit of every mean, interval and test.",
    "Scores: smile is the model's probability of a happy face (0 to 1); valence runs from −1 (negative) "
    "to +1 (positive); expressiveness is 1 − p(neutral); attention is the share of a participant's frames "
    "in which the face is found and turned to the screen.",
    "Baseline: before the ad each participant looks at a neutral screen. Baseline-corrected figures subtract "
    'each participant\'s own mean there, so 0 means "as before the ad" (attention is never corrected).',
    "Correction: an ad is tested second by second, so p-values are corrected for the number of seconds "
    "tested (Benjamini-Hochberg: false discovery rate; Holm: family-wise error) before a second counts as "
    "significant. Percentiles rank this ad among the organisation's other ads read by the same model.",
)


def how_to_read(pages: Pages) -> None:
    size, pad = 7.5, 0.1
    paragraphs = [wrap(text, CONTENT_W - 2 * pad, size) for text in HOW_TO_READ]
    gap = 0.05
    height = line_height(10) + 0.06 + sum(len(p) for p in paragraphs) * line_height(size)
    height += gap * (len(paragraphs) - 1) + 2 * pad
    pages.space(0.06)
    pages.make_room(height)
    pages.box(MARGIN_X, pages.y, CONTENT_W, height, BOX_FILL, RULE)
    y = pages.y + pad
    pages.put_text(MARGIN_X + pad, y, "How to read this report", 10, bold=True)
    y += line_height(10) + 0.06
    for lines in paragraphs:
        for line in lines:
            pages.put_text(MARGIN_X + pad, y, line, size)
            y += line_height(size)
        y += gap
    pages.y += height + 0.1


def key_figures(pages: Pages, data: ReportData) -> None:
    """The dashboard's cards: participants, most per second, frames, ad length."""
    totals, payload = data.payload["totals"], data.payload
    cards = [
        ("Participants (n)", str(totals["participants"])),
        ("Most per second", str(totals["max_participants_per_second"])),
        ("Frames analysed", str(totals["frames"])),
        ("Ad length", f"{fixed(payload['ad']['duration_s'], 1)} s"),
    ]
    gap, height = 0.12, 0.62
    width = (CONTENT_W - gap * (len(cards) - 1)) / len(cards)
    pages.space(0.08)
    pages.make_room(height)
    for index, (label, value) in enumerate(cards):
        x = MARGIN_X + index * (width + gap)
        pages.box(x, pages.y, width, height, BOX_FILL, RULE)
        pages.put_text(x + 0.1, pages.y + 0.08, label, 8, color=MUTED)
        pages.put_text(x + 0.1, pages.y + 0.27, shorten(value, width - 0.2, 14), 14, bold=True)
    pages.y += height + 0.1


def first_page(pages: Pages, data: ReportData) -> None:
    payload, ad = data.payload, data.readings.ad
    generated = datetime.fromisoformat(payload["generated_at"]).astimezone(UTC)
    pages.new_page()
    pages.text(ad.title, 18, bold=True, after=0.04)
    study = ad.study
    pages.text(f"{study.name} · {study.organization.name}", 10.5, color=MUTED, after=0.02)
    model_version = payload["model_version"] or "—"
    pages.text(
        f"Ad report · generated {generated:%Y-%m-%d %H:%M} UTC · model version {model_version}",
        9,
        color=MUTED,
        after=0.1,
    )
    pages.heading("Filters", 11, before=0.04)
    pages.table(
        [Column("Filter", 1.9), Column("Applied", CONTENT_W - 1.9)],
        [Row([name, value]) for name, value in filter_lines(data.readings.filters, payload)],
        size=8,
        pad=0.028,
    )
    key_figures(pages, data)
    if not data.has_readings:
        why = (
            "No readings yet: no participant's frames of this ad have been analysed."
            if not data.read_by_any_model
            else "No readings for these filters: none of the participants they select has a reading of "
            "this ad."
        )
        pages.text(why, 11, bold=True, after=0.08)

    scorecard = payload["scorecard"]
    pages.heading(f"Scorecard (validated participants with a reading: n = {scorecard['n']})", 11)
    norm = scorecard["norm"]

    def percentile(figure: dict) -> str:
        if figure["percentile"] is None:
            return "—" if norm["enough"] or figure["value"] is None else "too few ads"
        return ordinal(math.floor(figure["percentile"] + 0.5))  # halves up, as the dashboard's toFixed(0)

    def value(figure: dict) -> str:
        return (
            percent(figure["value"]) if figure["key"] in ("smiled", "attention") else fixed(figure["value"])
        )

    pages.table(
        [
            Column("Figure", 2.6),
            Column("This ad", 1.4, "right"),
            Column("Percentile in the norm", 1.9, "right"),
        ],
        [Row([figure["label"], value(figure), percentile(figure)]) for figure in scorecard["figures"]],
        size=8.5,
        pad=0.035,
    )
    pages.text(f"Norm: {norm['description']}.", 8, color=MUTED)
    pages.text(
        "Each figure over this ad's validated participants (any face quality, this model version), in raw "
        "scores: never baseline-corrected, so every ad is placed alike; the "
        "percentile is the share of the organisation's other ads, read by the same model, that score lower "
        "(ties count half).",
        8,
        color=MUTED,
    )

    pages.heading("Key moments", 11)
    moments = payload["moments"]
    if moments:
        pages.table(
            [
                Column("Moment", 2.9),
                Column("When", 1.0),
                Column("Mean [95% CI]", 2.0),
                Column("n", CONTENT_W - 5.9, "right"),
            ],
            [
                Row(
                    [
                        f"{'▲ peak' if m['kind'] == 'peak' else '▼ drop'} · {m['label']}",
                        m["time"],
                        with_ci(m["mean"], m["low"], m["high"]),
                        str(m["n"]),
                    ],
                    note=m["reason"],
                )
                for m in moments
            ],
            size=8.5,
        )
    else:
        pages.text("No second stands out.", 9)
    pages.text(payload["moment_rule"], 8, color=MUTED)
    if not data.has_readings:
        how_to_read(pages)  # else on top of the traces, which it is mostly about


# ---- charts -----------------------------------------------------------------------------------------------


def style_axes(axes, *, x_label: bool) -> None:
    axes.tick_params(labelsize=7.5, colors=INK, length=3)
    axes.grid(True, color=FAINT, linewidth=0.6)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        axes.spines[side].set_color("#8a96a3")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    if x_label:
        axes.set_xlabel("Time in ad (s)", fontsize=8, fontfamily=FONT)


def band(axes, x: np.ndarray, estimate: MeanEstimate, color: str, label: str, marked: bool) -> None:
    """The mean line with its 95% band (gaps where a second has none), as figures.band_traces."""
    axes.fill_between(x, estimate.low, estimate.high, color=color, alpha=0.2, linewidth=0)
    axes.plot(
        x,
        estimate.mean,
        color=color,
        linewidth=1.6,
        marker="o" if marked else None,
        markersize=2.6,
        label=label,
    )


def count_bars(axes, x: np.ndarray, counts: np.ndarray, seconds: int, label: str = "n") -> None:
    axes.bar(x, counts, width=0.9, color=N_COLOR, linewidth=0)
    axes.set_xlim(0, seconds)
    axes.set_ylim(0, max(float(np.max(counts)) if counts.size else 0.0, 1.0) * 1.1)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    axes.set_ylabel(label, fontsize=7.5, fontfamily=FONT)
    style_axes(axes, x_label=True)


def legend_above(axes, handles: list, columns: int = 4) -> None:
    axes.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.01),
        ncols=columns,
        frameon=False,
        fontsize=7.5,
        handlelength=1.6,
        borderaxespad=0.1,
    )


def band_legend(color: str = "#7f8b96") -> Patch:
    return Patch(facecolor=color, alpha=0.25, label="95% CI")


def trace_block_height(plot_h: float) -> float:
    """A trace chart's block: its legend, the plot, the bars and the time axis under them."""
    return 0.3 + plot_h + 0.1 + 0.7 + 0.45


def trace_with_bars(
    pages: Pages,
    data: ReportData,
    series: list[tuple[str, MeanEstimate, str]],
    y_label: str,
    counts: np.ndarray,
    *,
    plot_h: float = 2.35,
    percent_axis: bool = False,
) -> None:
    """One chart of lines with bands over the participants' bars (as the dashboard's trace figure)."""
    seconds = data.seconds
    x = np.arange(seconds) + 0.5
    marked = seconds <= MAX_MARKED_SECONDS

    def draw(axes_at) -> None:
        top = axes_at(0.55, 0.3, CONTENT_W - 0.7, plot_h)
        for label, estimate, color in series:
            band(top, x, estimate, color, label, marked)
        top.set_xlim(0, seconds)
        top.set_ylabel(y_label, fontsize=8, fontfamily=FONT)
        if percent_axis:
            top.set_ylim(0, 1.05)
            top.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        style_axes(top, x_label=False)
        top.tick_params(labelbottom=False)
        lines = [Line2D([], [], color=color, linewidth=1.6, label=label) for label, _e, color in series]
        legend_above(top, [*lines, band_legend()], columns=min(4, len(lines) + 1))
        count_bars(axes_at(0.55, 0.3 + plot_h + 0.1, CONTENT_W - 0.7, 0.7, sharex=top), x, counts, seconds)

    pages.chart(trace_block_height(plot_h), draw)


def trace_section(
    pages: Pages,
    data: ReportData,
    title: str,
    intro: str,
    series: list[tuple[str, MeanEstimate, str]],
    y_label: str,
    counts: np.ndarray,
    *,
    plot_h: float,
    percent_axis: bool = False,
) -> None:
    """A heading, a line on what the chart shows and the chart, on one page."""
    intro_size = 8
    pages.heading(title, 11, keep=pages.text_height(intro, intro_size) + trace_block_height(plot_h))
    pages.text(intro, intro_size, color=MUTED)
    trace_with_bars(pages, data, series, y_label, counts, plot_h=plot_h, percent_axis=percent_axis)


def emotion_panels(pages: Pages, data: ReportData, measures: list[str]) -> None:
    """One small panel per other emotion the model reads, on one shared y range."""
    baseline = data.readings.filters.baseline
    seconds, columns = data.seconds, 3
    x = np.arange(seconds) + 0.5
    width, gap_x, panel_h, gap_y = (CONTENT_W - 0.55 - 2 * 0.35) / 3, 0.35, 1.25, 0.55
    y_range = shared_range([data.readings.estimates[m] for m in measures])
    rows = [measures[i : i + columns] for i in range(0, len(measures), columns)]
    for row_index, row in enumerate(rows):
        last_row = row_index == len(rows) - 1

        def draw(axes_at, row=row, last_row=last_row) -> None:
            for column, measure in enumerate(row):
                axes = axes_at(0.55 + column * (width + gap_x), 0.22, width, panel_h)
                band(
                    axes,
                    x,
                    data.readings.estimates[measure],
                    MEASURE_COLORS[measure],
                    MEASURE_LABELS[measure],
                    False,
                )
                axes.set_xlim(0, seconds)
                if y_range:
                    axes.set_ylim(*y_range)
                axes.set_title(MEASURE_LABELS[measure], fontsize=8.5, fontfamily=FONT, loc="left", pad=3)
                style_axes(axes, x_label=last_row)
                if column == 0:
                    axes.set_ylabel("minus baseline" if baseline else "Score", fontsize=7.5, fontfamily=FONT)

        # Between rows, room for the tick labels and then the next row's titles (they touched at 0.12).
        pages.chart(0.22 + panel_h + (gap_y if last_row else 0.24), draw)


def traces_pages(pages: Pages, data: ReportData) -> None:
    baseline = data.readings.filters.baseline
    suffix = " (minus each participant's baseline)" if baseline else ""
    pages.new_page()
    pages.heading("Traces: mean per second across participants, 95% CI" + suffix, 12.5, keep=0.5)
    how_to_read(pages)
    shown = [m for m in ("smile", "valence") if m in data.readings.estimates]
    trace_section(
        pages,
        data,
        " and ".join(MEASURE_LABELS[m] for m in shown),
        f"{' and '.join(MEASURE_LABELS[m] for m in shown)} per second; bars: the participants behind each "
        "second.",
        [(MEASURE_LABELS[m], data.readings.estimates[m], MEASURE_COLORS[m]) for m in shown],
        "Score minus baseline" if baseline else "Score",
        data.readings.participants,
        plot_h=3.2,
    )
    if EXPRESSIVENESS in data.readings.estimates:
        trace_section(
            pages,
            data,
            "Expressiveness",
            "1 − p(neutral): how far the faces are from neutral, whatever the emotion.",
            [
                (
                    MEASURE_LABELS[EXPRESSIVENESS],
                    data.readings.estimates[EXPRESSIVENESS],
                    MEASURE_COLORS[EXPRESSIVENESS],
                )
            ],
            "Expressiveness minus baseline" if baseline else "Expressiveness",
            data.readings.participants,
            plot_h=1.5,
        )
    trace_section(
        pages,
        data,
        "Attention and retention",
        "Attention: the share of each participant's analysed frames in the second whose face was found and "
        f"turned to the screen ({TURNED_TO_SCREEN}), averaged across "
        f"participants. Retained: the share who attended (attention ≥ {ATTENTION_THRESHOLD:g}) in every "
        "second so far. Bars: participants with an analysed frame. Never baseline-corrected.",
        [
            (MEASURE_LABELS[ATTENTION], data.readings.attention, MEASURE_COLORS[ATTENTION]),
            ("Retained", data.readings.retention, RETENTION_COLOR),
        ],
        "Share of participants",
        data.attention_participants,
        plot_h=1.7,
        percent_axis=True,
    )
    others = [m for m in data.readings.estimates if m not in ("smile", "valence", EXPRESSIVENESS)]
    if others:
        pages.heading("The other emotions the model reads" + suffix, 11, keep=2.2)
        pages.text("One panel each, on one shared scale; n as in the first chart.", 8, color=MUTED)
        emotion_panels(pages, data, others)


def shade_significant(axes, significant: Sequence[int]) -> None:
    """The significant seconds shaded, as figures._significance_shapes does on the page."""
    for second in significant:
        axes.axvspan(second, second + 1, color=SIGNIFICANT, linewidth=0)


def star_significant(axes, significant: Sequence[int], values: np.ndarray, color: str) -> None:
    """A star on `values` at the middle of each significant second."""
    if significant:
        axes.plot(
            [second + 0.5 for second in significant],
            [values[second] for second in significant],
            linestyle="none",
            marker="*",
            markersize=8,
            color=color,
        )


def country_pages(pages: Pages, data: ReportData) -> None:
    payload, filters = data.payload, data.readings.filters
    comparison = payload["comparison"]
    measure = filters.measure
    baseline = filters.baseline and measure != ATTENTION
    label = MEASURE_LABELS[measure]
    pages.new_page()
    pages.heading(
        f"Country comparison: {label}" + (" (minus each participant's baseline)" if baseline else "")
    )
    seconds = data.seconds
    x = np.arange(seconds) + 0.5
    marked = seconds <= MAX_MARKED_SECONDS
    if not comparison:
        drawn = ", ".join(country_label(c) for c in data.readings.countries) or "none"
        pages.text(
            "No country comparison: it needs participants from at least two countries, and these filters "
            f"select {len(data.readings.countries)} ({drawn}).",
            10,
            bold=True,
        )
    else:
        a, b = comparison["countries"]
        significant = comparison["significant_seconds"]
        pages.text(
            f"Welch t-test of {comparison['measure_label']} per second, {country_label(a)} vs "
            f"{country_label(b)}: {len(significant)} of {comparison['tested_seconds']} testable seconds "
            f"differ ({comparison['correction_label']}). Seconds where either country has fewer than 2 "
            "participants are not tested.",
            9.5,
        )
        y_label = f"{label} minus baseline" if baseline else label
        # Past MAX_LEGEND_COUNTRIES the legend names the compared two; the summary table's swatches the rest.
        named = data.readings.countries if len(data.readings.countries) <= MAX_LEGEND_COUNTRIES else [a, b]
        legend_rows = math.ceil((len(named) + 2) / 3)
        legend_h = 0.18 * legend_rows

        def overlay(axes_at) -> None:
            axes = axes_at(0.55, 0.1, CONTENT_W - 0.7, 2.6)
            shade_significant(axes, significant)
            for index, country in enumerate(data.readings.countries):
                color = data.readings.colors.get(country, country_color(index))
                band(axes, x, data.readings.country_estimates[country], color, country_label(country), marked)
            star_significant(axes, significant, data.readings.country_estimates[a].mean, "#111111")
            axes.set_xlim(0, seconds)
            axes.set_ylabel(y_label, fontsize=8, fontfamily=FONT)
            style_axes(axes, x_label=True)
            handles = [
                Line2D(
                    [],
                    [],
                    color=data.readings.colors.get(c, country_color(i)),
                    linewidth=1.6,
                    label=country_label(c),
                )
                for i, c in enumerate(data.readings.countries)
                if c in named
            ]
            handles += [
                band_legend(),
                Patch(facecolor=SIGNIFICANT, label=f"{country_label(a)} vs {country_label(b)} differ ★"),
            ]
            axes.legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(0.0, -0.2),
                ncols=3,
                frameon=False,
                fontsize=7.5,
                handlelength=1.6,
            )

        pages.chart(2.7 + 0.55 + legend_h, overlay)
        if len(named) < len(data.readings.countries):
            pages.text("Each country's colour is beside its name in the summary table below.", 8, color=MUTED)

        rows = comparison["rows"]
        difference = nan_array([r["difference"] for r in rows])
        low, high = nan_array([r["low"] for r in rows]), nan_array([r["high"] for r in rows])
        pages.heading(f"Difference {country_label(a)} − {country_label(b)} per second", 11)
        pages.text(
            f"Welch t-test, 95% CI of the difference; shaded: significant ({comparison['correction_label']})",
            8,
            color=MUTED,
        )

        def difference_chart(axes_at) -> None:
            axes = axes_at(0.55, 0.1, CONTENT_W - 0.7, 1.9)
            shade_significant(axes, significant)
            axes.axhline(0, color="#8a96a3", linewidth=1.0)
            axes.fill_between(
                x[: len(rows)], low, high, color=(90 / 255, 90 / 255, 90 / 255), alpha=0.18, linewidth=0
            )
            axes.plot(
                x[: len(rows)],
                difference,
                color="#333333",
                linewidth=1.6,
                marker="o" if marked else None,
                markersize=2.6,
            )
            star_significant(axes, significant, difference, "#b45309")
            axes.set_xlim(0, seconds)
            axes.set_ylabel(f"{label} difference", fontsize=8, fontfamily=FONT)
            style_axes(axes, x_label=True)

        pages.chart(2.45, difference_chart)

    pages.heading("Summary by country", 11)
    if baseline or filters.baseline:
        pages.text(
            "Baseline-corrected: mean valence, mean expressiveness and the peak smile are minus each "
            "participant's baseline; attention is never corrected.",
            8,
            color=MUTED,
        )
    threshold = payload["options"]["smile_threshold"]
    columns = [
        Column("Country", 1.25),
        Column("Participants", 0.78, "right"),
        Column("Mean valence [95% CI]", 0.97, "right"),
        Column("Mean expressiveness [95% CI]", 0.97, "right"),
        Column("Peak smile (when)", 0.62, "right"),
        Column(f"Smiled (≥\u00a0{threshold:g})", 0.66, "right"),  # never "(≥" alone on a line
        Column("Mean attention [95% CI]", 0.97, "right"),
        Column("Attending to the end", CONTENT_W - 6.22, "right"),
    ]

    def mean_ci(row: dict, name: str) -> str:
        return f"{fixed(row[f'mean_{name}'])}\n[{fixed(row[f'{name}_low'])}, {fixed(row[f'{name}_high'])}]"

    rows = [
        Row(
            [
                place_label(row["country"]),
                str(row["participants"]),
                mean_ci(row, "valence"),
                mean_ci(row, "expressiveness"),
                f"{fixed(row['peak_smile'])}\n{row['peak_smile_time'] or '—'}",
                percent(row["smiled_share"]),
                mean_ci(row, "attention"),
                percent(row["retained_share"]),
            ],
            swatch=row["color"],
            bold=row["country"] == "All",
            fill=TOTAL_FILL if row["country"] == "All" else "",
        )
        for row in payload["summary"]
    ]
    if rows:
        pages.table(columns, rows, size=7.0)
    else:
        pages.text("No participant has a reading under these filters.", 9)


def build_ad_report(ad: Ad, filters: Filters) -> bytes:
    """The ad's report for these filters, as the bytes of an A4 PDF (module docstring)."""
    data = load_report_data(ad, filters)
    model_version = data.payload["model_version"] or "—"
    pages = Pages(footer=f"{ad.title} · model version {model_version}")
    first_page(pages, data)
    if data.has_readings:
        traces_pages(pages, data)
        country_pages(pages, data)
    generated = datetime.fromisoformat(data.payload["generated_at"])
    return pages.finish(
        {
            "Title": f"{ad.title}: ad report",
            "Subject": f"Model version {model_version}",
            "Author": ad.study.organization.name,
            "CreationDate": generated,
        }
    )
