//! `teardown report` of the replay fixtures, without a browser (the browser tests are in the
//! integration tests): the page's data holds every reported end, and the page of a JSON Lines
//! trace is the page of the recording it was made from.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::Command};

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut f: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".events.jsonl"))
        .collect();
    f.sort();
    assert!(f.len() >= 10, "{f:?}");
    f
}

fn teardown(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_teardown"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "teardown {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `teardown report INPUT -o PAGE`, which must succeed.
fn report(input: &std::path::Path, page: &std::path::Path) {
    teardown(&[
        "report".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        page.as_os_str(),
    ]);
}

/// The page's JSON document.
fn data(page: &std::path::Path) -> serde_json::Value {
    let html = std::fs::read_to_string(page).unwrap();
    let open = "<script type=\"application/json\" id=\"report-data\">";
    let at = html.find(open).unwrap() + open.len();
    let len = html[at..].find("</script>").unwrap();
    serde_json::from_str(&html[at..at + len]).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("teardown-pages-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_reported_end_of_every_fixture_is_in_its_page() {
    let dir = scratch("ends");
    for rec in fixtures() {
        let page = dir.join("page.html");
        report(&rec, &page);
        let d = data(&page);
        let jsonl = teardown(&[
            "replay".as_ref(),
            rec.as_os_str(),
            "--format".as_ref(),
            "jsonl".as_ref(),
        ]);
        let mut ids: Vec<u64> = String::from_utf8(jsonl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "connection")
            .map(|v| v["id"].as_u64().unwrap())
            .collect();
        let mut rows: Vec<u64> = d["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_u64().unwrap())
            .collect();
        ids.sort_unstable();
        rows.sort_unstable();
        assert_eq!(rows, ids, "{}", rec.display());
        let t = &d["totals"];
        assert_eq!(
            t["deviates"].as_u64().unwrap()
                + t["incomplete"].as_u64().unwrap()
                + t["conforms"].as_u64().unwrap(),
            ids.len() as u64
        );
    }
}

/// Rows whose times are rounded to the microsecond: a trace's lines carry each end's start in
/// seconds (as a float) and its events' times from there.
fn rounded(d: &serde_json::Value) -> serde_json::Value {
    let mut d = d.clone();
    for r in d["rows"].as_array_mut().unwrap() {
        let times = r[15][0].as_array_mut().unwrap();
        for t in times {
            *t = ((t.as_u64().unwrap() + 500) / 1000).into();
        }
        r[7] = serde_json::Value::Null; // start, ms
        r[8] = ((r[8].as_u64().unwrap() + 500) / 1000).into(); // duration
    }
    d["series"] = serde_json::Value::Null;
    d["source"] = serde_json::Value::Null;
    d["totals"]["events"] = serde_json::Value::Null;
    d
}

#[test]
fn the_page_of_a_trace_is_the_page_of_its_recording() {
    let dir = scratch("trace");
    for rec in fixtures() {
        let from_rec = dir.join("rec.html");
        report(&rec, &from_rec);
        for form in ["compact", "full"] {
            let trace = dir.join(format!("{form}.trace.jsonl"));
            let lines = teardown(&[
                "replay".as_ref(),
                rec.as_os_str(),
                "--format".as_ref(),
                "jsonl".as_ref(),
                "--conforming".as_ref(),
                form.as_ref(),
            ]);
            std::fs::write(&trace, lines).unwrap();
            let from_trace = dir.join(format!("{form}.html"));
            report(&trace, &from_trace);
            let (a, b) = (rounded(&data(&from_rec)), rounded(&data(&from_trace)));
            for (x, y) in a["rows"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["rows"].as_array().unwrap())
            {
                // Rows whose times are a microsecond apart may round apart: compare the rest.
                let strip = |r: &serde_json::Value| {
                    let mut r = r.clone();
                    r[15][0] = serde_json::Value::Null;
                    r
                };
                assert_eq!(strip(x), strip(y), "{} ({form})", rec.display());
                let (tx, ty) = (x[15][0].as_array().unwrap(), y[15][0].as_array().unwrap());
                assert_eq!(tx.len(), ty.len());
                for (p, q) in tx.iter().zip(ty) {
                    assert!(
                        p.as_u64().unwrap().abs_diff(q.as_u64().unwrap()) <= 1,
                        "{p} {q}"
                    );
                }
            }
            let (mut a, mut b) = (a, b);
            a["rows"] = serde_json::Value::Null;
            b["rows"] = serde_json::Value::Null;
            assert_eq!(a, b, "{} ({form})", rec.display());
        }
    }
}

/// Runs teardown expecting it to fail; returns what it said.
fn teardown_fails(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_teardown"))
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "teardown {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn a_report_never_writes_over_its_input_nor_leaves_half_a_page() {
    let dir = scratch("safe");
    let rec = dir.join("rec.events.jsonl");
    std::fs::copy(&fixtures()[0], &rec).unwrap();
    let original = std::fs::read(&rec).unwrap();
    // The recording under another name: a link to it, and a path through `.`.
    let link = dir.join("link.html");
    std::os::unix::fs::symlink(&rec, &link).unwrap();
    let dotted = dir.join(".").join("rec.events.jsonl");
    for page in [&link, &dotted] {
        let said = teardown_fails(&[
            "report".as_ref(),
            rec.as_os_str(),
            "-o".as_ref(),
            page.as_os_str(),
        ]);
        assert!(said.contains("would overwrite its recording"), "{said}");
        assert_eq!(std::fs::read(&rec).unwrap(), original);
    }

    // A trace whose second line cannot be read: the page there before is kept, and no partial
    // file is left beside it.
    let lines = teardown(&[
        "replay".as_ref(),
        rec.as_os_str(),
        "--format".as_ref(),
        "jsonl".as_ref(),
        "--conforming".as_ref(),
        "compact".as_ref(),
    ]);
    let first = String::from_utf8(lines)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let mut line: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(line["type"], "connection", "{first}");
    let page = dir.join("page.html");
    std::fs::write(&page, "the page before").unwrap();
    let mut bad_inputs = Vec::new();
    // Times past the end of u64 nanoseconds.
    let mut far = line.clone();
    far["start_unix"] = 1e300.into();
    far["steps"][0][0] = 5.into();
    bad_inputs.push(("times out of range", far.to_string()));
    // More steps than a trace keeps of a connection.
    let steps = line["steps"].as_array_mut().unwrap();
    let last = steps.last().unwrap().clone();
    steps.resize(33, last);
    bad_inputs.push(("too many steps", line.to_string()));
    // A line longer than any a trace writes.
    bad_inputs.push(("longer than", "x".repeat(200 * 1024)));
    for (why, second) in &bad_inputs {
        let trace = dir.join("bad.trace.jsonl");
        std::fs::write(&trace, format!("{first}\n{second}\n")).unwrap();
        let said = teardown_fails(&[
            "report".as_ref(),
            trace.as_os_str(),
            "-o".as_ref(),
            page.as_os_str(),
        ]);
        assert!(said.contains("line 2"), "{why}: {said}");
        if *why == "longer than" {
            assert!(said.contains(why), "{said}");
        }
        assert_eq!(
            std::fs::read_to_string(&page).unwrap(),
            "the page before",
            "{why}"
        );
        assert_eq!(
            names_in(&dir),
            [
                "bad.trace.jsonl",
                "link.html",
                "page.html",
                "rec.events.jsonl"
            ],
            "{why}"
        );
    }
    // The good line alone makes a page, which takes the old page's place.
    let trace = dir.join("bad.trace.jsonl");
    std::fs::write(&trace, format!("{first}\n")).unwrap();
    report(&trace, &page);
    assert_eq!(data(&page)["rows"].as_array().unwrap().len(), 1);
    assert_eq!(names_in(&dir).len(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A process name with control characters is written into the page as every text output
/// writes it (an escape sequence), so the page and the SVG files name it alike.
#[test]
fn a_process_name_is_escaped_as_in_every_text_output() {
    let dir = scratch("comm");
    let text = std::fs::read_to_string(&fixtures()[0]).unwrap();
    assert!(text.contains("\"comm\":\"python3\""));
    let rec = dir.join("named.events.jsonl");
    std::fs::write(
        &rec,
        text.replace("\"comm\":\"python3\"", "\"comm\":\"py\\u001b[2J\\u0007\""),
    )
    .unwrap();
    let page = dir.join("page.html");
    report(&rec, &page);
    let strings: Vec<String> = data(&page)["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert!(
        strings.iter().any(|s| s == "py\\x1b[2J\\x07"),
        "{strings:?}"
    );
    assert!(!strings.iter().any(|s| s.contains('\u{1b}')), "{strings:?}");
}
