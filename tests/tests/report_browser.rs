//! `teardown report` and `--svg-dir` in a real browser: Debian's chromium, headless, opens the
//! pages made from the replay fixtures and from live traces of the scenario lab. The tests read
//! the DOM after the page's script ran (the ladder's arrows, labels, states and values), its
//! console (no script errors), and screenshots (something drawn, in the right colours).

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use teardown_integration_tests::{
    browser::{self, Drawn},
    cli, gate,
    lab::scenarios,
    tracer,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../teardown-user/tests/fixtures")
        .join(format!("{name}.events.jsonl"))
}

/// A scratch directory of this test, empty.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("teardown-report-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `teardown ARGS`, which must succeed: its stdout.
fn teardown(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(cli::teardown_bin().unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "teardown {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The page of `recording`, written into `dir`.
fn report(recording: &Path, dir: &Path) -> PathBuf {
    let page = dir.join("report.html");
    teardown(&[
        "report".as_ref(),
        recording.as_os_str(),
        "-o".as_ref(),
        page.as_os_str(),
    ]);
    page
}

/// The ladder of every end of `recording`, as `replay --svg-dir DIR --svg all` writes them.
fn svg_files(recording: &Path, dir: &Path) {
    teardown(&[
        "replay".as_ref(),
        recording.as_os_str(),
        "--svg-dir".as_ref(),
        dir.as_os_str(),
        "--svg".as_ref(),
        "all".as_ref(),
    ]);
}

/// Each reported end of `recording` as JSON Lines (full form): id -> its line.
fn ends(recording: &Path) -> Vec<serde_json::Value> {
    let out = teardown(&[
        "replay".as_ref(),
        recording.as_os_str(),
        "--format".as_ref(),
        "jsonl".as_ref(),
        "--conforming".as_ref(),
        "full".as_ref(),
    ]);
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "connection")
        .collect()
}

/// The end of `role`, not a listener.
fn end_of<'a>(ends: &'a [serde_json::Value], role: &str) -> &'a serde_json::Value {
    ends.iter()
        .find(|e| e["verdict"]["role"] == role)
        .unwrap_or_else(|| panic!("no {role} in {ends:#?}"))
}

/// The page opened at `#conn=ID`: its ladder, once the script ran without an error.
fn open_ladder(page: &Path, id: u64) -> (Drawn, String) {
    let run = browser::dom(&browser::file_url(page, Some(&format!("conn={id}"))));
    assert!(
        run.script_errors().is_empty(),
        "script errors: {:?}",
        run.script_errors()
    );
    let dom = run.stdout;
    assert!(
        dom.contains("data-ready=\"1\""),
        "the script did not finish: {dom}"
    );
    assert!(
        !dom.contains("data-errors="),
        "the page reported errors: {dom}"
    );
    let view = &dom[dom.find("id=\"ladder-view\"").expect("no ladder view")..];
    let drawn = Drawn::parse(view).unwrap_or_else(|| panic!("no ladder drawn: {view}"));
    assert_eq!(
        drawn.connection,
        Some(id),
        "the ladder of another connection"
    );
    (drawn, dom)
}

fn labels(d: &Drawn, kind: &str) -> Vec<(Option<u8>, String)> {
    d.of_kind(kind)
        .iter()
        .map(|a| (a.step, a.label.clone()))
        .collect()
}

const FOUR_STEPS: [&str; 4] = [
    "FIN seq=U",
    "ACK seq=V ack=U+1",
    "FIN,ACK seq=W ack=U+1",
    "ACK seq=U+1 ack=W+1",
];

/// The four documented steps drawn in order, each from its sender's lifeline (the active
/// closer is on the left), with the values of U, V and W in the legend.
fn assert_four_steps(d: &Drawn, end: &serde_json::Value) {
    let steps = labels(d, "step");
    let expected: Vec<(Option<u8>, String)> = FOUR_STEPS
        .iter()
        .enumerate()
        .map(|(i, l)| (Some(i as u8 + 1), (*l).to_owned()))
        .collect();
    assert_eq!(steps, expected, "{d:#?}");
    let from_left: Vec<bool> = d.of_kind("step").iter().map(|a| a.from_left).collect();
    assert_eq!(from_left, [true, false, false, true]);
    let waves = &end["verdict"]["waves"];
    let legend = format!("U={} V={} W={}", waves["u"], waves["v"], waves["w"]);
    assert!(
        d.texts.iter().any(|t| t.starts_with(&legend)),
        "{legend} not in {:?}",
        d.texts
    );
    assert_eq!(d.template_steps, 4, "the documented sequence, faint");
}

#[test]
fn a_four_way_close_is_the_documents_figure() {
    if !gate::can_run(gate::CHROMIUM) {
        return;
    }
    let dir = scratch("four-way");
    let rec = fixture("four_way_close");
    let page = report(&rec, &dir);
    let ends = ends(&rec);
    for role in ["active_closer", "passive_closer"] {
        let end = end_of(&ends, role);
        let (d, dom) = open_ladder(&page, end["id"].as_u64().unwrap());
        assert_four_steps(&d, end);
        assert!(d.of_kind("missing").is_empty() && d.of_kind("reset").is_empty());
        // Both ends were traced: each lifeline has its own states.
        let left = d.states_of(0);
        let right = d.states_of(1);
        for s in ["FIN_WAIT1", "FIN_WAIT2"] {
            assert!(left.contains(&s), "{left:?}");
        }
        for s in ["CLOSE_WAIT", "LAST_ACK"] {
            assert!(right.contains(&s), "{right:?}");
        }
        assert!(d.states.iter().all(|s| !s.2), "nothing inferred: {d:#?}");
        // The orphan's timewait socket: the peer's trace shows it reached TIME_WAIT.
        let tw = d.time_wait.clone().expect("no TIME_WAIT bar");
        assert!(tw.starts_with("TIME_WAIT"), "{tw}");
        assert!(dom.contains("conforms"));
    }
}

#[test]
fn a_three_segment_close_carries_step_two_on_step_three() {
    if !gate::can_run(gate::CHROMIUM) {
        return;
    }
    let dir = scratch("three-segment");
    let rec = fixture("three_segment_close");
    let page = report(&rec, &dir);
    let ends = ends(&rec);
    let end = end_of(&ends, "active_closer");
    let (d, _) = open_ladder(&page, end["id"].as_u64().unwrap());
    let steps: Vec<Option<u8>> = d.of_kind("step").iter().map(|a| a.step).collect();
    assert_eq!(steps, [Some(1), Some(3), Some(4)], "{d:#?}");
    let merged = labels(&d, "merged");
    assert_eq!(
        merged,
        [(
            Some(2),
            "ACK seq=V ack=U+1 (carried by the FIN,ACK)".to_owned()
        )]
    );
}

#[test]
fn a_reset_is_drawn_from_the_end_that_sent_it() {
    if !gate::can_run(gate::CHROMIUM) {
        return;
    }
    let dir = scratch("reset");
    let rec = fixture("linger_zero");
    let page = report(&rec, &dir);
    let ends = ends(&rec);
    // SO_LINGER 0: the client's close() sends the RST.
    let client = ends
        .iter()
        .find(|e| e["verdict"]["reset"]["by"] == "us")
        .expect("no end that sent the RST");
    let (d, dom) = open_ladder(&page, client["id"].as_u64().unwrap());
    let resets = d.of_kind("reset");
    assert!(!resets.is_empty(), "{d:#?}");
    let us_left = d
        .texts
        .iter()
        .position(|t| t.contains("(this end)"))
        .unwrap()
        < d.texts.iter().position(|t| t.contains("(peer")).unwrap();
    for r in &resets {
        assert!(r.label.starts_with("RST"), "{r:?}");
        assert_eq!(r.from_left, us_left, "the RST leaves the sender: {r:?}");
    }
    assert!(d.of_kind("step").is_empty(), "no close began: {d:#?}");
    assert_eq!(
        d.template_steps, 4,
        "the documented sequence for comparison"
    );
    assert!(
        d.texts.iter().any(|t| t == "findings: reset_sent"),
        "{:?}",
        d.texts
    );
    assert!(dom.contains("abort_by_rst"));
}

/// The page draws a ladder as `--svg-dir` writes it: the same words in the same order, for
/// every end of every fixture.
#[test]
fn the_page_and_the_svg_files_draw_the_same_ladders() {
    if !gate::can_run(gate::CHROMIUM) {
        return;
    }
    let fixtures = [
        "four_way_close",
        "three_segment_close",
        "half_close_with_data",
        "linger_zero",
        "refused",
        "close_wait_open",
        "reset_in_close_wait",
        "server_first",
    ];
    for name in fixtures {
        let dir = scratch(&format!("same-{name}"));
        let rec = fixture(name);
        let page = report(&rec, &dir);
        let svgs = dir.join("svg");
        svg_files(&rec, &svgs);
        for end in ends(&rec) {
            let id = end["id"].as_u64().unwrap();
            let file = fs::read_to_string(svgs.join(format!("connection-{id}.svg")))
                .unwrap_or_else(|e| panic!("{name}: no SVG of #{id}: {e}"));
            let from_file = Drawn::parse(&file).unwrap();
            let (on_page, _) = open_ladder(&page, id);
            assert_eq!(on_page.texts, from_file.texts, "{name} #{id}");
            assert_eq!(on_page.arrows, from_file.arrows, "{name} #{id}");
            assert_eq!(on_page.states, from_file.states, "{name} #{id}");
        }
    }
}

/// A process that names itself with markup and quotes is text on the page and in the SVG.
#[test]
fn names_from_the_trace_are_text_never_markup() {
    if !gate::can_run(gate::CHROMIUM) {
        return;
    }
    let dir = scratch("escaping");
    // 15 bytes, what a task's comm holds.
    let name = "</script><b>'\"&";
    let json_name = serde_json::to_string(name).unwrap();
    let text = fs::read_to_string(fixture("four_way_close")).unwrap();
    assert!(text.contains("\"comm\":\"python3\""));
    let rec = dir.join("hostile.events.jsonl");
    fs::write(
        &rec,
        text.replace("\"comm\":\"python3\"", &format!("\"comm\":{json_name}")),
    )
    .unwrap();
    let page = report(&rec, &dir);
    let html = fs::read_to_string(&page).unwrap();
    assert_eq!(
        html.matches("</script>").count(),
        2,
        "only the page's own two scripts end: the name cannot close one"
    );
    let ends = ends(&rec);
    let id = end_of(&ends, "active_closer")["id"].as_u64().unwrap();
    let (d, dom) = open_ladder(&page, id);
    // In the serialized DOM the name is escaped text: no <b> element was made of it.
    assert!(!dom.contains("<b>"), "the name became markup");
    assert!(
        dom.contains("&lt;/script&gt;&lt;b&gt;"),
        "the name is not shown"
    );
    let title = format!("pid 22700 ({name})");
    assert!(
        d.texts.iter().any(|t| t.ends_with(&title)),
        "{title} not in {:?}",
        d.texts
    );
    assert!(dom.contains("<title>teardown report</title>"));
    // The SVG file: well-formed XML with the name as text (chromium's XML parser says so).
    let svgs = dir.join("svg");
    svg_files(&rec, &svgs);
    let file = svgs.join(format!("connection-{id}.svg"));
    let run = browser::dom(&browser::file_url(&file, None));
    assert!(
        !run.stdout.contains("parsererror") && !run.stdout.contains("error on line"),
        "{}",
        run.stdout
    );
    let drawn = Drawn::parse(&run.stdout).expect("chromium shows no ladder");
    assert!(
        drawn.texts.iter().any(|t| t.ends_with(&title)),
        "{:?}",
        drawn.texts
    );
}

/// Screenshots of the page and of an SVG file: not blank, the ladder drawn, a RST in red.
#[test]
fn screenshots_show_the_ladder() {
    if !gate::can_run(gate::CHROMIUM) {
        return;
    }
    let dir = scratch("screenshots");
    let rec = fixture("four_way_close");
    let page = report(&rec, &dir);
    let id = end_of(&ends(&rec), "active_closer")["id"].as_u64().unwrap();
    let shot = browser::screenshot(
        &browser::file_url(&page, Some(&format!("conn={id}"))),
        &dir.join("page.png"),
        1280,
        2400,
    );
    let all = shot.all();
    let total = (shot.width * shot.height) as usize;
    let white = shot.count(all, |r, g, b| r > 245 && g > 245 && b > 245);
    assert!(
        white < total * 97 / 100,
        "nearly blank: {white} of {total} white"
    );
    assert!(
        shot.count(all, browser::dark) > 5_000,
        "no text or lines drawn"
    );

    // The RST of an abort, drawn red, in the SVG file opened alone.
    let rec = fixture("linger_zero");
    let svgs = dir.join("svg");
    svg_files(&rec, &svgs);
    let sent = ends(&rec)
        .into_iter()
        .find(|e| e["verdict"]["reset"]["by"] == "us")
        .unwrap();
    let file = svgs.join(format!("connection-{}.svg", sent["id"]));
    let shot = browser::screenshot(
        &browser::file_url(&file, None),
        &dir.join("svg.png"),
        900,
        800,
    );
    let red = shot.count(shot.all(), browser::red);
    assert!(
        red > 300,
        "the RST arrow is not drawn red ({red} red pixels)"
    );
    assert!(shot.count(shot.all(), browser::dark) > 2_000);
}

// ---------------------------------------------------------------------------------------------
// Live traces of the scenario lab.

/// Runs lab scenario `name` (its own checks included), recording its connections, and
/// returns the report page and the ends.
fn lab_report(name: &str) -> (PathBuf, Vec<serde_json::Value>) {
    let dir = scratch(&format!("lab-{name}"));
    let rec = dir.join("lab.events.jsonl");
    tracer::record_next(&rec);
    let s = scenarios::find(name).unwrap();
    (s.run)();
    assert!(rec.exists(), "the scenario recorded nothing");
    let page = report(&rec, &dir);
    let ends: Vec<_> = ends(&rec)
        .into_iter()
        .filter(|e| e["verdict"]["role"] != "listener")
        .collect();
    (page, ends)
}

#[test]
fn live_four_way_close() {
    if !gate::can_run(gate::LAB_CHROMIUM) {
        return;
    }
    let (page, ends) = lab_report("four-way-client-first");
    for role in ["active_closer", "passive_closer"] {
        let end = end_of(&ends, role);
        let (d, _) = open_ladder(&page, end["id"].as_u64().unwrap());
        assert_four_steps(&d, end);
    }
}

#[test]
fn live_three_segment_close() {
    if !gate::can_run(gate::LAB_CHROMIUM) {
        return;
    }
    let (page, ends) = lab_report("three-segment-close");
    let end = end_of(&ends, "active_closer");
    let (d, _) = open_ladder(&page, end["id"].as_u64().unwrap());
    assert_eq!(d.of_kind("merged").len(), 1, "{d:#?}");
    assert_eq!(d.of_kind("merged")[0].step, Some(2));
}

#[test]
fn live_reset_abort() {
    if !gate::can_run(gate::LAB_CHROMIUM) {
        return;
    }
    let (page, ends) = lab_report("reset-linger-zero");
    let sender = ends
        .iter()
        .find(|e| e["verdict"]["reset"]["by"] == "us")
        .expect("no end sent the RST");
    let (d, _) = open_ladder(&page, sender["id"].as_u64().unwrap());
    assert!(!d.of_kind("reset").is_empty(), "{d:#?}");
}

/// The final ACK lost: the passive closer's FIN sent again from LAST_ACK, then the ACK.
#[test]
fn live_final_ack_lost() {
    if !gate::can_run(gate::LAB_CHROMIUM) {
        return;
    }
    let (page, ends) = lab_report("final-ack-lost");
    let passive = end_of(&ends, "passive_closer");
    let (d, _) = open_ladder(&page, passive["id"].as_u64().unwrap());
    let resent = d.of_kind("retransmit");
    assert!(
        resent
            .iter()
            .any(|a| a.label.starts_with("FIN retransmitted") && !a.from_left),
        "no FIN resent by the passive closer (right): {d:#?}"
    );
    assert_four_steps(&d, passive);
    let lost = d.of_kind("missing");
    assert_eq!(lost.len(), 1, "{d:#?}");
    assert_eq!(
        lost[0].label,
        "ACK seq=U+1 ack=W+1 not received: the FIN came again"
    );
    assert!(lost[0].from_left, "the active closer's ACK");
    let active = end_of(&ends, "active_closer");
    let (d, _) = open_ladder(&page, active["id"].as_u64().unwrap());
    assert!(
        d.time_wait.is_some(),
        "the active closer's TIME_WAIT: {d:#?}"
    );
}
