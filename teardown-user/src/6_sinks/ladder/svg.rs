//! A [`Ladder`] as SVG. The layout is [`LAYOUT`]; the report page reads the same numbers
//! ([`Layout::json`]) and the same class names, so that a ladder looks alike in both.

use std::fmt::Write as _;

use super::{ArrowKind, Ladder, TimeWaitEnd};
use crate::{
    judge::{DocSide, Step, STEPS},
    kernel::clock::{decimal, human_ns},
};

/// Where things go, in SVG user units.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub width: u32,
    /// The two lifelines' x.
    pub lane_x: [u32; 2],
    /// The first row's y.
    pub top: u32,
    pub row_height: u32,
    /// Rows the TIME_WAIT bar spans.
    pub time_wait_rows: u32,
    pub bottom: u32,
}

pub const LAYOUT: Layout = Layout {
    width: 860,
    lane_x: [250, 690],
    top: 120,
    row_height: 38,
    time_wait_rows: 3,
    bottom: 60,
};

/// The colours of each kind of arrow (stroke), also the page's.
pub const STYLE: &str = "\
.ladder{font-family:sans-serif;font-size:12px;background:#fff}\
.ladder .title{font-size:14px;font-weight:bold}\
.ladder .legend,.ladder .role,.ladder .time,.ladder .dt{fill:#555}\
.ladder .lifeline{stroke:#333;stroke-width:2}\
.ladder .lifeline.untraced{stroke-dasharray:6 4;stroke:#999}\
.ladder .tmpl line{stroke:#ddd;stroke-width:6;stroke-dasharray:10 6}\
.ladder .tmpl text{fill:#c8c8c8;font-style:italic}\
.ladder .arrow line{stroke-width:2}\
.ladder .arrow.step line{stroke:#1a1a1a}.ladder .arrow.step text.label{fill:#1a1a1a}\
.ladder .arrow.merged line{stroke:#888;stroke-dasharray:3 3}.ladder .arrow.merged text{fill:#888}\
.ladder .arrow.missing line{stroke:#c00;stroke-dasharray:8 5}.ladder .arrow.missing text{fill:#c00}\
.ladder .arrow.unseen line{stroke:#aaa;stroke-dasharray:2 4}.ladder .arrow.unseen text{fill:#999}\
.ladder .arrow.retransmit line{stroke:#d97700}.ladder .arrow.retransmit text{fill:#a65b00}\
.ladder .arrow.reset line{stroke:#d00;stroke-width:3}.ladder .arrow.reset text{fill:#d00;font-weight:bold}\
.ladder .arrow.data line{stroke:#0a6ed1}.ladder .arrow.data text{fill:#0a6ed1}\
.ladder .state text{font-weight:bold;fill:#2b5d2b}\
.ladder .state.inferred text{font-weight:normal;font-style:italic;fill:#7a9a7a}\
.ladder .timewait rect{fill:#f3d37a;stroke:#b8901c}\
.ladder .timewait.inferred rect{fill:#fbefc8;stroke-dasharray:4 3}\
.ladder .findings{fill:#c00}";

/// The arrowhead colour of each kind (markers cannot take their line's colour everywhere).
pub fn head_colour(kind: ArrowKind) -> &'static str {
    match kind {
        ArrowKind::Step => "#1a1a1a",
        ArrowKind::Merged => "#888",
        ArrowKind::Missing => "#c00",
        ArrowKind::Unseen => "#aaa",
        ArrowKind::Retransmit => "#d97700",
        ArrowKind::Reset => "#d00",
        ArrowKind::Data => "#0a6ed1",
    }
}

impl Layout {
    pub fn y(&self, row: u16) -> u32 {
        self.top + u32::from(row) * self.row_height
    }

    pub fn height(&self, rows: usize) -> u32 {
        self.top + (rows as u32 + self.time_wait_rows + 1) * self.row_height + self.bottom
    }

    /// The layout and colours as a JSON object, for the report page's drawing.
    pub fn json(&self) -> String {
        let heads: Vec<String> = ArrowKind::ALL
            .iter()
            .map(|k| format!("\"{}\":\"{}\"", k.name(), head_colour(*k)))
            .collect();
        let kinds: Vec<String> = ArrowKind::ALL
            .iter()
            .map(|k| format!("\"{}\"", k.name()))
            .collect();
        let steps: Vec<String> = [
            Step::FirstWave,
            Step::SecondWave,
            Step::ThirdWave,
            Step::FourthWave,
        ]
        .iter()
        .map(|s| format!("\"{}\"", super::step_label(*s)))
        .collect();
        let senders: Vec<&str> = STEPS
            .iter()
            .map(|s| {
                if s.sender == DocSide::Active {
                    "0"
                } else {
                    "1"
                }
            })
            .collect();
        format!(
            "{{\"width\":{},\"laneX\":[{},{}],\"top\":{},\"rowHeight\":{},\"timeWaitRows\":{},\
             \"bottom\":{},\"heads\":{{{}}},\"kinds\":[{}],\"steps\":[{}],\"senders\":[{}]}}",
            self.width,
            self.lane_x[0],
            self.lane_x[1],
            self.top,
            self.row_height,
            self.time_wait_rows,
            self.bottom,
            heads.join(","),
            kinds.join(","),
            steps.join(","),
            senders.join(",")
        )
    }
}

/// `s` as XML text or attribute value.
pub fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The words of a TIME_WAIT bar.
pub fn time_wait_text(l: &Ladder) -> Option<String> {
    let bar = l.time_wait?;
    let mut s = String::from("TIME_WAIT");
    if bar.inferred {
        s.push_str(" (a timewait socket's)");
    }
    match (bar.end, bar.duration_ms) {
        (TimeWaitEnd::Left(how), Some(ms)) => {
            let _ = write!(
                s,
                " {}, {}",
                human_ns(ms.saturating_mul(1_000_000)),
                how.name()
            );
        }
        (TimeWaitEnd::Left(how), None) => {
            let _ = write!(s, ", {}", how.name());
        }
        (TimeWaitEnd::NotSeen, _) => s.push_str(": 2MSL (60 s on Linux), its end not seen"),
    }
    if bar.restarts > 0 {
        let _ = write!(s, ", restarted {}x", bar.restarts);
    }
    Some(s)
}

/// The legend under the title: U, V, W and W - V.
pub fn legend(l: &Ladder) -> String {
    let n = |v: Option<u32>| v.map_or("?".to_owned(), |v| v.to_string());
    if l.u.is_none() && l.v.is_none() && l.w.is_none() {
        return "no close began: the documented sequence (faint) for comparison".to_owned();
    }
    let mut s = format!("U={} V={} W={}", n(l.u), n(l.v), n(l.w));
    if let Some(d) = l.data_in_close_wait {
        let _ = write!(s, "  W-V={d} bytes");
    }
    s
}

/// A row's time label: `+42.186 ms`.
pub fn time_text(ns: u64) -> String {
    format!("+{} ms", decimal(ns, 1_000_000, 3))
}

/// An arrow label's y, its line's middle being at `mid`: above the line, and a merged step's
/// below the arrow it rides on (whose label is above).
pub fn label_y(kind: ArrowKind, mid: u32) -> u32 {
    if kind == ArrowKind::Merged {
        mid + 30
    } else {
        mid - 6
    }
}

/// An arrow's label with its count.
pub fn arrow_text(label: &str, count: u64) -> String {
    if count > 1 {
        format!("{label} x{count}")
    } else {
        label.to_owned()
    }
}

/// What a lane's header says under its endpoint.
pub fn lane_text(lane: &super::Lane) -> String {
    let whose = match (lane.us, lane.traced) {
        (true, _) => "this end",
        (false, true) => "peer, traced",
        (false, false) => "peer, not traced: drawn from this end's events",
    };
    format!("{} ({whose})", lane.role)
}

/// The SVG document of one ladder. `title` is the line above the drawing (the connection,
/// its process).
pub fn render(l: &Ladder, title: &str) -> String {
    let g = LAYOUT;
    let h = g.height(l.rows.len());
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"ladder\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" data-connection=\"{id}\">\n<style>{STYLE}</style>\n<defs>",
        w = g.width,
        id = l.id
    );
    for k in ArrowKind::ALL {
        let _ = write!(
            s,
            "<marker id=\"head-{}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" \
             markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" \
             fill=\"{}\"/></marker>",
            k.name(),
            head_colour(k)
        );
    }
    s.push_str("</defs>\n");
    let _ = writeln!(
        s,
        "<rect width=\"{}\" height=\"{h}\" fill=\"#fff\"/>\n<text class=\"title\" x=\"10\" \
         y=\"22\">{}</text>\n<text class=\"headline\" x=\"10\" y=\"42\">{}</text>\n<text \
         class=\"legend\" x=\"10\" y=\"60\">{}</text>",
        g.width,
        xml(title),
        xml(&l.headline),
        xml(&legend(l))
    );
    let bottom = h - g.bottom;
    for (i, lane) in l.lanes.iter().enumerate() {
        let x = g.lane_x[i];
        let _ = writeln!(
            s,
            "<g class=\"lane\" data-lane=\"{i}\"><text class=\"endpoint\" x=\"{x}\" y=\"84\" \
             text-anchor=\"middle\">{}</text><text class=\"role\" x=\"{x}\" y=\"100\" \
             text-anchor=\"middle\">{}</text><line class=\"lifeline{}\" x1=\"{x}\" y1=\"106\" \
             x2=\"{x}\" y2=\"{bottom}\"/></g>",
            xml(&super::super::endpoint(&lane.endpoint)),
            xml(&lane_text(lane)),
            if lane.traced { "" } else { " untraced" }
        );
    }
    // The documented sequence, faint, at each step's row.
    s.push_str("<g class=\"template\">");
    for (k, row) in l.template.iter().enumerate() {
        // The document's arrows: the active closer is on the left.
        let sender = usize::from(STEPS[k].sender != DocSide::Active);
        let (x1, x2) = (g.lane_x[sender], g.lane_x[1 - sender]);
        let y = g.y(*row);
        let label = STEP_LABELS.get(k).map_or("", |l| l.as_str());
        // No label: the actual arrows carry the words; the tooltip names the step.
        let _ = write!(
            s,
            "<g class=\"tmpl\" data-step=\"{}\"><title>documented step {}: {}</title><line \
             x1=\"{x1}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{}\"/></g>",
            k + 1,
            k + 1,
            xml(label),
            y + g.row_height / 2
        );
    }
    s.push_str("</g>\n");
    // Times.
    let mut last: Option<u64> = None;
    for (i, t) in l.rows.iter().enumerate() {
        if last != Some(*t) {
            let _ = write!(
                s,
                "<text class=\"time\" x=\"10\" y=\"{}\">{}</text>",
                g.y(i as u16) + 4,
                time_text(*t)
            );
        }
        last = Some(*t);
    }
    s.push('\n');
    // Arrows.
    let mut prev_step_t: Option<u64> = None;
    for a in &l.arrows {
        let from = usize::from(a.from.min(1));
        let (x1, x2) = (g.lane_x[from], g.lane_x[1 - from]);
        let y1 = g.y(a.row);
        let y2 = if a.to_row > a.row {
            g.y(a.to_row)
        } else {
            y1 + g.row_height / 2
        };
        let step = a
            .step
            .map_or(String::new(), |n| format!(" data-step=\"{n}\""));
        let _ = write!(
            s,
            "<g class=\"arrow {k}\" data-kind=\"{k}\"{step}><line x1=\"{x1}\" y1=\"{y1}\" \
             x2=\"{x2}\" y2=\"{y2}\" marker-end=\"url(#head-{k})\"/><text class=\"label\" \
             x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            (x1 + x2) / 2,
            label_y(a.kind, (y1 + y2) / 2),
            xml(&arrow_text(&a.label, a.count)),
            k = a.kind.name()
        );
        if a.kind == ArrowKind::Step {
            let t = l.rows.get(usize::from(a.row)).copied().unwrap_or(0);
            if let Some(p) = prev_step_t {
                let _ = write!(
                    s,
                    "<text class=\"dt\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">+{}</text>",
                    (x1 + x2) / 2,
                    (y1 + y2) / 2 + 14,
                    human_ns(t.saturating_sub(p))
                );
            }
            prev_step_t = Some(t);
        }
        s.push_str("</g>\n");
    }
    // States.
    for st in &l.states {
        let lane = usize::from(st.lane.min(1));
        let (x, anchor) = if lane == 0 {
            (g.lane_x[0] - 12, "end")
        } else {
            (g.lane_x[1] + 12, "start")
        };
        let name = if st.inferred {
            format!("({})", st.state.name())
        } else {
            st.state.name().to_owned()
        };
        let _ = writeln!(
            s,
            "<g class=\"state{}\" data-lane=\"{lane}\" data-state=\"{}\"><text x=\"{x}\" \
             y=\"{}\" text-anchor=\"{anchor}\">{name}</text></g>",
            if st.inferred { " inferred" } else { "" },
            st.state.name(),
            g.y(st.row) + 16
        );
    }
    // TIME_WAIT.
    if let (Some(bar), Some(text)) = (l.time_wait, time_wait_text(l)) {
        let lane = usize::from(bar.lane.min(1));
        let x = g.lane_x[lane];
        let y = g.y(bar.row) + 22;
        // It outlasts everything drawn: down to the last row, and its words under it.
        let end = g.y((l.rows.len() as u32 + g.time_wait_rows).saturating_sub(1) as u16);
        let height = end.saturating_sub(y).max(g.row_height);
        let (tx, anchor) = if lane == 0 {
            (x - 6, "start")
        } else {
            (x + 6, "end")
        };
        let _ = writeln!(
            s,
            "<g class=\"timewait{}\"><rect x=\"{}\" y=\"{y}\" width=\"12\" height=\"{height}\"/>\
             <text x=\"{tx}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text></g>",
            if bar.inferred { " inferred" } else { "" },
            x - 6,
            y + height + 16,
            xml(&text)
        );
    }
    if !l.findings.is_empty() {
        let codes: Vec<&str> = l.findings.iter().map(|c| c.as_str()).collect();
        let _ = writeln!(
            s,
            "<text class=\"findings\" x=\"10\" y=\"{}\">findings: {}</text>",
            h - 20,
            xml(&codes.join(", "))
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The documented steps' labels, in order.
static STEP_LABELS: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
    [
        Step::FirstWave,
        Step::SecondWave,
        Step::ThirdWave,
        Step::FourthWave,
    ]
    .map(super::step_label)
});
