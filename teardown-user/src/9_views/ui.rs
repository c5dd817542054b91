//! Drawing `teardown top` from an [`App`]: one function, no state of its own.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Dataset, GraphType, Paragraph, Row, Table, Wrap,
};
use ratatui::Frame;

use super::app::App;
use crate::kernel::clock::{human_age, human_ms};
use crate::monitor::{Level, Reuse, StateCounts};

/// The message of the teardown panel when no tracer feeds it.
pub const TRACER_MISSING: &str = "eBPF tracer not attached: showing sock_diag only";

fn level_style(l: Level) -> Style {
    match l {
        Level::Ok => Style::default().fg(Color::Green),
        Level::Notice => Style::default().fg(Color::Cyan),
        Level::Warning => Style::default()
            .fg(Color::Yellow)
            .add_modifier(Modifier::BOLD),
        Level::Critical => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

fn block(title: &str) -> Block<'_> {
    Block::default().borders(Borders::ALL).title(title)
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App) {
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(9),
            Constraint::Min(6),
            Constraint::Min(6),
            Constraint::Length(1),
        ])
        .split(f.area());
    draw_header(f, app, rows[0]);
    if app.namespaces.is_empty() {
        let top = split_h(rows[1], 34);
        draw_counts(f, app, top[0]);
        draw_chart(f, app, top[1]);
    } else {
        let top = split_h(rows[1], 25);
        draw_counts(f, app, top[0]);
        let right = split_h(top[1], 55);
        draw_namespaces(f, app, right[0]);
        draw_chart(f, app, right[1]);
    }
    let mid = split_h(rows[2], 50);
    draw_destinations(f, app, mid[0]);
    draw_pressure(f, app, mid[1]);
    let bottom = split_h(rows[3], 50);
    draw_leaks(f, app, bottom[0]);
    draw_teardowns(f, app, bottom[1]);
    draw_status(f, app, rows[4]);
}

fn split_h(r: Rect, left_pct: u16) -> std::rc::Rc<[Rect]> {
    Layout::default()
        .direction(Direction::Horizontal)
        .constraints([
            Constraint::Percentage(left_pct),
            Constraint::Percentage(100 - left_pct),
        ])
        .split(r)
}

fn draw_header(f: &mut Frame, app: &App, area: Rect) {
    let mut spans = vec![
        Span::styled(
            "teardown top",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(" | {} | ", app.source)),
    ];
    match &app.report {
        Some(r) => {
            spans.push(Span::raw("level "));
            spans.push(Span::styled(r.level.name(), level_style(r.level)));
        }
        None => spans.push(Span::raw("waiting for the first poll")),
    }
    if app.paused {
        spans.push(Span::styled(
            " | PAUSED",
            Style::default().fg(Color::Yellow),
        ));
    }
    spans.push(Span::raw(" | q quit, p pause, c clear"));
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_counts(f: &mut Frame, app: &App, area: Rect) {
    let counts = app.report.as_ref().map(|r| r.counts).unwrap_or_default();
    let rows: Vec<Row> = counts
        .rows()
        .iter()
        .map(|(name, n)| Row::new(vec![Cell::from(*name), Cell::from(n.to_string())]))
        .collect();
    let t = Table::new(rows, [Constraint::Min(21), Constraint::Length(8)])
        .header(
            Row::new(vec!["STATE", "COUNT"]).style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(block("Closing states"));
    f.render_widget(t, area);
}

/// One row per network namespace, most timewait sockets first.
fn draw_namespaces(f: &mut Frame, app: &App, area: Rect) {
    let title = match &app.unobserved {
        Some((n, _)) => format!("Network namespaces ({n} not observed)"),
        None => "Network namespaces".to_owned(),
    };
    let rows: Vec<Row> = app
        .namespaces
        .iter()
        .map(|n| {
            Row::new(vec![
                Cell::from(n.label.clone()),
                Cell::from(n.counts.timewait_total().to_string()),
                Cell::from(n.counts.close_wait.to_string()),
                Cell::from(n.level.name()).style(level_style(n.level)),
            ])
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new(vec!["NAMESPACE", "TIMEWAIT", "CLOSE_WAIT", "LEVEL"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block(&title));
    f.render_widget(t, area);
}

/// A chart series: name, colour, and how to read it from the counts.
type Series = (&'static str, Color, fn(&StateCounts) -> usize);

const SERIES: [Series; 4] = [
    ("TIME_WAIT", Color::Cyan, |c| c.time_wait),
    ("FIN_WAIT2", Color::Magenta, |c| {
        c.fin_wait2 + c.fin_wait2_timewait
    }),
    ("CLOSE_WAIT", Color::Red, |c| c.close_wait),
    ("LAST_ACK", Color::Yellow, |c| c.last_ack),
];

fn draw_chart(f: &mut Frame, app: &App, area: Rect) {
    let data: Vec<Vec<(f64, f64)>> = SERIES
        .iter()
        .map(|(_, _, get)| {
            app.history
                .iter()
                .map(|(t, c)| (*t, get(c) as f64))
                .collect()
        })
        .collect();
    let datasets: Vec<Dataset> = SERIES
        .iter()
        .zip(&data)
        .map(|((name, color, _), d)| {
            Dataset::default()
                .name(*name)
                .marker(symbols::Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(*color))
                .data(d)
        })
        .collect();
    let x0 = app.history.front().map(|h| h.0).unwrap_or(0.0);
    let x1 = app.history.back().map(|h| h.0).unwrap_or(1.0).max(x0 + 1.0);
    let ymax = data
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(1.0_f64, f64::max)
        .ceil();
    let chart = Chart::new(datasets)
        .block(block("History"))
        .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 1)))
        .x_axis(
            Axis::default()
                .bounds([x0, x1])
                .labels([format!("{x0:.0}s"), format!("{x1:.0}s")]),
        )
        .y_axis(
            Axis::default()
                .bounds([0.0, ymax])
                .labels(["0".to_string(), format!("{ymax:.0}")]),
        );
    f.render_widget(chart, area);
}

fn draw_destinations(f: &mut Frame, app: &App, area: Rect) {
    let rows: Vec<Row> = app
        .report
        .iter()
        .flat_map(|r| r.per_remote.iter())
        .map(|g| {
            Row::new(vec![
                Cell::from(g.key.to_string()),
                Cell::from(g.time_wait.to_string()),
                Cell::from(g.fin_wait2.to_string()),
            ])
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Min(22),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new(vec!["REMOTE", "TIME_WAIT", "FIN_WAIT2"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block("Top destinations by TIME_WAIT"));
    f.render_widget(t, area);
}

fn draw_pressure(f: &mut Frame, app: &App, area: Rect) {
    let (title, rows) = match &app.report {
        Some(r) => {
            let k = &r.settings;
            let title = format!(
                "Port pressure (range {}-{}, tw_reuse={})",
                k.port_range.0, k.port_range.1, k.tw_reuse
            );
            let rows: Vec<Row> = r
                .port_pressure
                .iter()
                .map(|p| {
                    Row::new(vec![
                        Cell::from(p.remote.to_string()),
                        Cell::from(format!("{}/{}", p.blocking, p.timewait)),
                        Cell::from(format!("{:.1}%", p.used_pct)),
                        Cell::from(match p.reuse {
                            Reuse::Off => "off",
                            Reuse::Applies => "reuse",
                            Reuse::NotForThisDestination => "no",
                        }),
                        Cell::from(Span::styled(p.level.name(), level_style(p.level))),
                    ])
                })
                .collect();
            (title, rows)
        }
        None => ("Port pressure".to_string(), vec![]),
    };
    let t = Table::new(
        rows,
        [
            Constraint::Min(22),
            Constraint::Length(11),
            Constraint::Length(7),
            Constraint::Length(5),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new(vec!["REMOTE", "BLOCK/TW", "USED", "REUSE", "LEVEL"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block(&title));
    f.render_widget(t, area);
}

fn draw_leaks(f: &mut Frame, app: &App, area: Rect) {
    let mut lines: Vec<Line> = Vec::new();
    if let Some(r) = &app.report {
        for l in &r.close_wait_leaks {
            let owner = l
                .owners
                .first()
                .map(|o| format!("{}/{}", o.pid, crate::escape::text(&o.comm)))
                .unwrap_or_else(|| "?".into());
            lines.push(Line::from(vec![
                Span::styled("CLOSE_WAIT ", Style::default().fg(Color::Red)),
                Span::raw(format!(
                    "{} {} {}",
                    human_age(l.age_ms, l.at_least),
                    owner,
                    l.tuple
                )),
            ]));
        }
        for s in &r.stalls {
            lines.push(Line::from(vec![
                Span::styled(
                    format!("{} ", s.state.name()),
                    Style::default().fg(Color::Yellow),
                ),
                Span::raw(format!("{} {}", human_age(s.age_ms, s.at_least), s.tuple)),
            ]));
        }
        if lines.is_empty() {
            lines.push(Line::from(format!(
                "no CLOSE_WAIT older than {}, nothing stuck",
                human_ms(r.close_wait_threshold_ms)
            )));
        }
    }
    let p = Paragraph::new(lines).block(block("Leaks and stuck sockets"));
    f.render_widget(p, area);
}

fn draw_teardowns(f: &mut Frame, app: &App, area: Rect) {
    let inner_h = usize::from(area.height.saturating_sub(2));
    let lines: Vec<Line> = if app.teardowns.is_empty() {
        let mut v = vec![];
        if app.tracer_attached {
            v.push(Line::from("no deviating teardown yet"));
        } else {
            v.push(Line::styled(
                TRACER_MISSING,
                Style::default().fg(Color::Yellow),
            ));
            if let Some(n) = &app.tracer_note {
                v.push(Line::from(n.as_str()));
            }
        }
        v
    } else {
        let skip = app.teardowns.len().saturating_sub(inner_h);
        app.teardowns
            .iter()
            .skip(skip)
            .map(|s| Line::from(s.as_str()))
            .collect()
    };
    let p = Paragraph::new(lines)
        .wrap(Wrap { trim: true })
        .block(block("Latest deviating teardowns"));
    f.render_widget(p, area);
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    let line = if let Some(e) = &app.error {
        Line::styled(format!("poll failed: {e}"), Style::default().fg(Color::Red))
    } else if let Some(r) = &app.report {
        let b = &r.tw_buckets;
        Line::from(vec![
            Span::raw(format!(
                "timewait {}/{} ({:.1}%) ",
                b.count, b.max, b.used_pct
            )),
            Span::styled(b.level.name(), level_style(b.level)),
            Span::raw(format!(
                " | overflow {} | entries {:.1}/s -> steady {:.0} | exits {} expired {} reused {} killed, {} restarts",
                b.overflow_total.map(|o| o.to_string()).unwrap_or_else(|| "?".into()),
                r.rate.per_second,
                r.rate.steady_state,
                r.exits.expired,
                r.exits.reused,
                r.exits.killed,
                r.exits.timer_restarts
            )),
        ])
    } else {
        Line::from("")
    };
    f.render_widget(Paragraph::new(line), area);
}
