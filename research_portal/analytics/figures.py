"""Plotly figure specs as plain dicts ({"data": [...], "layout": {...}}), rendered by the plotly.js that ships
in the plotly package. Plain dicts rather than plotly.graph_objects: building and validating graph objects
costs tens of milliseconds per figure on every page view; tests validate these dicts with graph_objects."""

from __future__ import annotations

import math

import numpy as np

from research_portal.analytics.definitions import MEASURE_LABELS
from research_portal.analytics.stats import MeanEstimate, WelchTest
from research_portal.countries import country_label

MEASURE_COLORS = {
    "smile": "#E69F00",
    "valence": "#0072B2",
    "angry": "#D55E00",
    "disgust": "#009E73",
    "fear": "#CC79A7",
    "happy": "#B8860B",
    "sad": "#56B4E9",
    "surprise": "#6A3D9A",
    "neutral": "#7F7F7F",
    "contempt": "#8C564B",
    # Derived measures (definitions.DERIVED_MEASURES).
    "expressiveness": "#44AA99",
    "attention": "#117733",
}
COUNTRY_COLORS = [
    "#1F77B4",
    "#D62728",
    "#2CA02C",
    "#9467BD",
    "#FF7F0E",
    "#17BECF",
    "#8C564B",
    "#E377C2",
    "#7F7F7F",
    "#BCBD22",
]
N_COLOR = "#9aa5b1"  # the participant-count bars under every trace
PANEL_PX, PANEL_GAP_PX = 200, 44  # small multiples: a panel's plot height, the gap holding a panel title
SIGNIFICANT_FILL = "rgba(255, 179, 0, 0.22)"
TIME_AXIS = "Time in ad (s)"
SHARE_AXIS = "Share of the ad's length (%)"
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13, "color": "#1b1f24"}


def clean(values, digits: int = 6) -> list[float | None]:
    """JSON-safe numbers: NaN/inf become null (a gap in the chart)."""
    return [round(float(v), digits) if math.isfinite(v) else None for v in np.asarray(values, dtype=float)]


def rgba(hex_color: str, alpha: float) -> str:
    red, green, blue = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {alpha})"


def country_color(index: int) -> str:
    return COUNTRY_COLORS[index % len(COUNTRY_COLORS)]


def base_layout(title: str, height: int, subtitle: str = "") -> dict:
    """A figure's layout; `subtitle` is a second, smaller title line (plotly's title.subtitle)."""
    layout = {
        # Title pinned to the top of the figure, legend under it: a legend that wraps on a narrow screen
        # then grows into the top margin instead of over the title.
        "title": {
            "text": title,
            "x": 0.01,
            "xanchor": "left",
            "y": 0.995,
            "yref": "container",
            "yanchor": "top",
            "font": {"size": 16},
        },
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 96, "b": 50},
        "font": FONT,
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "hovermode": "x unified",
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        # Where dashboard.js draws the playback cursor: one vertical line per entry, on the x axis `xref`
        # from bottom to top of `yref` (the whole plot here; one panel of small multiples).
        "meta": {"cursors": [{"xref": "x", "yref": "paper"}]},
    }
    if subtitle:
        layout["title"]["subtitle"] = {"text": subtitle, "font": {"size": 12}}
    return layout


def axis(title: str = "", **extra) -> dict:
    return {
        "title": {"text": title},
        "gridcolor": "#e6e9ee",
        "zerolinecolor": "#b9c0c8",
        "linecolor": "#8a96a3",
        "showline": True,
        **extra,
    }


def count_step(most: float, ticks: int = 5) -> int:
    """A whole tick step (1, 2, 5, 10, 20, 50, ...) giving about `ticks` ticks from 0 to `most`."""
    raw = max(float(most), 1.0) / ticks
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    return int(next(f * magnitude for f in (1, 2, 5, 10) if f * magnitude >= raw))


def count_axis(title: str, most: float, ticks: int = 5, **extra) -> dict:
    """An axis of participant counts: from 0, whole-number ticks only (no "2.5 participants")."""
    return axis(title, rangemode="tozero", tickformat="d", tick0=0, dtick=count_step(most, ticks), **extra)


def band_traces(
    x: list[float],
    estimate: MeanEstimate,
    name: str,
    color: str,
    group: str,
    visible: bool | str = True,
    axes: tuple[str, str] = ("x", "y"),
) -> list[dict]:
    """A mean line with its 95% confidence band (two invisible edge traces, the lower filled to the upper);
    one legend entry toggles all three."""
    common = {
        "type": "scatter",
        "x": x,
        "legendgroup": group,
        "visible": visible,
        "xaxis": axes[0],
        "yaxis": axes[1],
    }
    customdata = [
        [int(n), low, high]
        for n, low, high in zip(estimate.n, clean(estimate.low), clean(estimate.high), strict=True)
    ]
    return [
        {
            **common,
            "name": f"{name} 95% CI (upper)",
            "y": clean(estimate.high),
            "mode": "lines",
            "line": {"width": 0, "color": color},
            "hoverinfo": "skip",
            "showlegend": False,
        },
        {
            **common,
            "name": f"{name} 95% CI",
            "y": clean(estimate.low),
            "mode": "lines",
            "line": {"width": 0, "color": color},
            "fill": "tonexty",
            "fillcolor": rgba(color, 0.2),
            "hoverinfo": "skip",
            "showlegend": False,
        },
        {
            **common,
            "name": name,
            "y": clean(estimate.mean),
            "mode": "lines+markers",
            "line": {"width": 2.2, "color": color},
            "marker": {"size": 4, "color": color},
            "customdata": customdata,
            "hovertemplate": f"{name}: %{{y:.3f}} [%{{customdata[1]:.3f}}, %{{customdata[2]:.3f}}], "
            "n=%{customdata[0]}<extra></extra>",
        },
    ]


def y_title(measure: str, baseline: bool) -> str:
    label = MEASURE_LABELS[measure]
    return f"{label} minus baseline" if baseline else label


def participants_bars(x: list[float], participants: np.ndarray) -> dict:
    """The bars under a trace (axis y2): how many participants are behind each second."""
    return {
        "type": "bar",
        "name": "Participants (n)",
        "x": x,
        "y": [int(v) for v in participants],
        "xaxis": "x",
        "yaxis": "y2",
        "marker": {"color": N_COLOR},
        "hovertemplate": "n=%{y}<extra></extra>",
        "showlegend": False,
    }


def trace_figure(
    x: list[float],
    duration_s: float,
    estimates: dict[str, MeanEstimate],
    participants: np.ndarray,
    baseline: bool,
    title: str,
) -> dict:
    """Every measure of `estimates` (those the model version reads, in display order) over the ad timeline
    with 95% bands (smile and valence shown, the emotions one legend click away), and below it the number
    of participants behind each second."""
    data = []
    for measure in estimates:
        visible = True if measure in ("smile", "valence") else "legendonly"
        data += band_traces(
            x, estimates[measure], MEASURE_LABELS[measure], MEASURE_COLORS[measure], measure, visible
        )
    data.append(participants_bars(x, participants))
    layout = base_layout(title, 560)
    layout.update(
        xaxis=axis(TIME_AXIS, range=[0, duration_s], anchor="y2"),
        yaxis=axis("Score (baseline-corrected)" if baseline else "Score", domain=[0.3, 1.0]),
        yaxis2=count_axis("n", participants.max() if len(participants) else 0, 3, domain=[0.0, 0.2]),
        bargap=0.1,
    )
    return {"data": data, "layout": layout}


def shared_range(estimates: list[MeanEstimate]) -> list[float] | None:
    """[low, high] covering every mean and band, padded by 5%; None when there is nothing to show."""
    values = np.concatenate([np.concatenate([e.low, e.high, e.mean]) for e in estimates]) if estimates else []
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    low, high = float(finite.min()), float(finite.max())
    pad = max((high - low) * 0.05, 0.01)
    return [round(low - pad, 6), round(high + pad, 6)]


def _significance_shapes(seconds: list[int], xref: str, yref: str, step: float = 1.0) -> list[dict]:
    """A shaded band over each significant position: [i, i + 1) seconds, or [i, i + 1) * step on an axis
    of shares (ad vs ad by share of length)."""
    return [
        {
            "type": "rect",
            "xref": xref,
            "yref": yref,
            "x0": round(s * step, 6),
            "x1": round((s + 1) * step, 6),
            "y0": 0,
            "y1": 1,
            "fillcolor": SIGNIFICANT_FILL,
            "line": {"width": 0},
            "layer": "below",
        }
        for s in seconds
    ]


def country_figure(
    x: list[float],
    duration_s: float,
    countries: list[str],
    estimates: dict[str, MeanEstimate],
    measure: str,
    baseline: bool,
    layout_kind: str,
    compared: tuple[str, str] | None,
    significant_seconds: list[int],
    correction_label: str,
    colors: dict[str, str],
) -> dict:
    """The chosen measure per country, overlaid or as small multiples, with the seconds where the two
    compared countries differ significantly (after correction) shaded. Countries by name and code."""
    label = MEASURE_LABELS[measure]
    shaded = ""
    if compared:
        names = f"{country_label(compared[0])} vs {country_label(compared[1])}"
        shaded = f"shaded: {names} differ ({correction_label})"
    data: list[dict] = []
    layout = base_layout(f"{label} by country", 460, shaded)
    if layout_kind == "multiples" and countries:
        columns = min(3, len(countries))
        rows = math.ceil(len(countries) / columns)
        # Sizes in pixels: the gap between rows holds the next panel's title, never axis labels (those are
        # drawn under the lowest panel of each column only).
        plot_px = rows * PANEL_PX + (rows - 1) * PANEL_GAP_PX
        margin = layout["margin"]
        layout["height"] = plot_px + margin["t"] + margin["b"]
        gap_x, gap_y = 0.06, PANEL_GAP_PX / plot_px
        width, height = (1 - gap_x * (columns - 1)) / columns, PANEL_PX / plot_px
        # One shared y range, set explicitly: plotly.js autoranges matched axes wrongly on first draw.
        y_range = shared_range([estimates[country] for country in countries])
        cursors = []  # one playback cursor per panel, so none crosses an empty cell of the grid
        shapes = []
        annotations = []
        for index, country in enumerate(countries):
            row, column = divmod(index, columns)
            suffix = "" if index == 0 else str(index + 1)
            x_id, y_id = f"x{suffix}", f"y{suffix}"
            left, top = column * (width + gap_x), 1 - row * (height + gap_y)
            # Rounded into [0, 1]: float sums land a hair outside (-5.6e-17), which plotly refuses.
            x0, x1 = round(left, 6), round(min(left + width, 1.0), 6)
            y0, y1 = round(max(top - height, 0.0), 6), round(top, 6)
            lowest = index + columns >= len(countries)  # no panel below it in its column
            layout[f"xaxis{suffix}"] = axis(
                TIME_AXIS if lowest else "",
                range=[0, duration_s],
                anchor=y_id,
                domain=[x0, x1],
                showticklabels=lowest,
                **({} if index == 0 else {"matches": "x"}),
            )
            cursors.append({"xref": x_id, "yref": f"{y_id} domain"})
            layout[f"yaxis{suffix}"] = axis(
                y_title(measure, baseline) if column == 0 else "",
                anchor=x_id,
                domain=[y0, y1],
                **({"range": y_range} if index == 0 and y_range else {}),
                **({} if index == 0 else {"matches": "y"}),
            )
            annotations.append(
                {
                    "text": f"<b>{country_label(country)}</b>",
                    "xref": f"{x_id} domain",
                    "yref": f"{y_id} domain",
                    "x": 0.02,
                    "y": 1.0,
                    "xanchor": "left",
                    "yanchor": "bottom",
                    "showarrow": False,
                }
            )
            color = colors.get(country, country_color(index))
            name = country_label(country)
            data += band_traces(x, estimates[country], name, color, country, True, (x_id, y_id))
            if compared and country in compared:
                shapes += _significance_shapes(significant_seconds, x_id, f"{y_id} domain")
        layout["shapes"] = shapes
        layout["annotations"] = annotations
        layout["showlegend"] = False
        layout["meta"] = {"cursors": cursors}
    else:
        for index, country in enumerate(countries):
            color = colors.get(country, country_color(index))
            data += band_traces(x, estimates[country], country_label(country), color, country)
        layout.update(
            xaxis=axis(TIME_AXIS, range=[0, duration_s]),
            yaxis=axis(y_title(measure, baseline)),
            shapes=_significance_shapes(significant_seconds, "x", "paper"),
        )
    if compared and significant_seconds:
        first = compared[0]
        ys = estimates[first].mean if first in estimates else np.full(len(x), np.nan)
        axes = ("x", "y")
        if layout_kind == "multiples" and first in countries:
            index = countries.index(first)
            suffix = "" if index == 0 else str(index + 1)
            axes = (f"x{suffix}", f"y{suffix}")
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"Significant: {country_label(compared[0])} vs {country_label(compared[1])}",
                "x": [s + 0.5 for s in significant_seconds],
                "y": clean([ys[s] for s in significant_seconds]),
                "xaxis": axes[0],
                "yaxis": axes[1],
                "marker": {"symbol": "star", "size": 11, "color": "#111111"},
                "hovertemplate": "significant difference<extra></extra>",
            }
        )
    return {"data": data, "layout": layout}


def difference_figure(
    x: list[float],
    x_title: str,
    x_range: list[float],
    names: tuple[str, str],
    test: WelchTest,
    adjusted_p: np.ndarray,
    significant: list[int],
    measure: str,
    correction_label: str,
    step: float = 1.0,
) -> dict:
    """The per-position difference between two compared groups (two countries, two ads) with its Welch 95%
    CI; the positions significant after correction are shaded and starred. `step`: the width of a position
    on the x axis (1 s, or a share of the ads' lengths)."""
    name_a, name_b = names
    label = MEASURE_LABELS[measure]
    customdata = [[q] for q in clean(adjusted_p)]
    data = [
        {
            "type": "scatter",
            "x": x,
            "y": clean(test.high),
            "mode": "lines",
            "line": {"width": 0},
            "hoverinfo": "skip",
            "showlegend": False,
            "name": "difference 95% CI (upper)",
        },
        {
            "type": "scatter",
            "x": x,
            "y": clean(test.low),
            "mode": "lines",
            "line": {"width": 0},
            "fill": "tonexty",
            "fillcolor": "rgba(90, 90, 90, 0.18)",
            "hoverinfo": "skip",
            "showlegend": False,
            "name": "difference 95% CI",
        },
        {
            "type": "scatter",
            "x": x,
            "y": clean(test.difference),
            "mode": "lines+markers",
            "name": f"{label}: {name_a} − {name_b}",
            "line": {"color": "#333333", "width": 2},
            "marker": {"size": 4},
            "customdata": customdata,
            "hovertemplate": f"{name_a} − {name_b}: %{{y:.3f}}, adjusted p=%{{customdata[0]:.4f}}"
            "<extra></extra>",
        },
    ]
    if significant:
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"Significant ({correction_label})",
                "x": [x[s] for s in significant],
                "y": clean([test.difference[s] for s in significant]),
                "marker": {"symbol": "star", "size": 11, "color": "#b45309"},
                "hoverinfo": "skip",
            }
        )
    per = "per second" if step == 1.0 else "along the ads"
    layout = base_layout(f"Difference {name_a} − {name_b} {per}", 360, f"Welch t-test, {correction_label}")
    layout.update(
        xaxis=axis(x_title, range=x_range),
        yaxis=axis(f"{label} difference", zeroline=True, zerolinewidth=2),
        shapes=_significance_shapes(significant, "x", "paper", step),
    )
    return {"data": data, "layout": layout}


def pair_figure(
    x: list[float],
    x_title: str,
    x_range: list[float],
    estimates: dict[str, MeanEstimate],
    colors: dict[str, str],
    measure: str,
    baseline: bool,
    significant: list[int],
    subtitle: str,
    step: float = 1.0,
) -> dict:
    """Two groups' traces of one measure overlaid (ad vs ad), each with its 95% band, the positions where
    they differ significantly (after correction) shaded."""
    data: list[dict] = []
    for index, (name, estimate) in enumerate(estimates.items()):
        data += band_traces(x, estimate, name, colors[name], f"group{index}")
    layout = base_layout(f"{MEASURE_LABELS[measure]}: ad vs ad", 460, subtitle)
    layout.update(
        xaxis=axis(x_title, range=x_range),
        yaxis=axis(y_title(measure, baseline)),
        shapes=_significance_shapes(significant, "x", "paper", step),
    )
    return {"data": data, "layout": layout}


FUNNEL_STAGES = [
    ("started", "Started"),
    ("consented", "Consented"),
    ("checks_passed", "Passed checks"),
    ("viewed", "Completed viewing"),
    ("validated", "Validated"),
]


def funnel_figure(rows: list[dict]) -> dict:
    """Participants reaching each stage, one bar group per stage and one colour per country."""
    data = []
    for index, row in enumerate(rows):
        data.append(
            {
                "type": "bar",
                "name": country_label(row["country"]),
                "x": [label for _key, label in FUNNEL_STAGES],
                "y": [row[key] for key, _label in FUNNEL_STAGES],
                "marker": {"color": country_color(index)},
                "hovertemplate": "%{x}: %{y}<extra>" + country_label(row["country"]) + "</extra>",
            }
        )
    most = max((row[key] for row in rows for key, _label in FUNNEL_STAGES), default=0)
    layout = base_layout("Participant funnel by country", 380)
    layout.update(
        barmode="group",
        hovermode="closest",
        xaxis=axis(""),
        yaxis=count_axis("Participants", most),
        meta={"cursors": []},
    )
    return {"data": data, "layout": layout}


def quota_figure(rows: list[dict]) -> dict:
    """Validated completes against each country's quota target."""
    countries = [country_label(row["country"]) for row in rows]
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "name": "Quota target",
            "y": countries,
            "x": [row["target"] for row in rows],
            "marker": {"color": "#dfe3e8"},
            "hovertemplate": "target %{x}<extra></extra>",
        },
        {
            "type": "bar",
            "orientation": "h",
            "name": "Validated",
            "y": countries,
            "x": [row["validated"] for row in rows],
            "marker": {"color": "#2CA02C"},
            "width": 0.5,
            "hovertemplate": "validated %{x}<extra></extra>",
        },
    ]
    most = max((max(row["target"], row["validated"]) for row in rows), default=0)
    layout = base_layout("Quota progress (validated completes)", 140 + 34 * max(len(rows), 1))
    layout.update(
        barmode="overlay",
        hovermode="closest",
        xaxis=count_axis("Participants", most),
        yaxis=axis("", autorange="reversed"),
        meta={"cursors": []},
    )
    return {"data": data, "layout": layout}
