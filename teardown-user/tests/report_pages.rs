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
        teardown(&[
            "report".as_ref(),
            rec.as_os_str(),
            "-o".as_ref(),
            page.as_os_str(),
        ]);
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
        teardown(&[
            "report".as_ref(),
            rec.as_os_str(),
            "-o".as_ref(),
            from_rec.as_os_str(),
        ]);
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
            teardown(&[
                "report".as_ref(),
                trace.as_os_str(),
                "-o".as_ref(),
                from_trace.as_os_str(),
            ]);
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
