//! `scenario --list` / `scenario NAME [--record FILE]`: runs one scenario of the lab by hand
//! (as root) and prints its trace: every event of both ends with sequence fields and socket
//! flags, and each end's verdict. `--record FILE` also writes the scenario's events as a
//! recording (`teardown replay` and `teardown report` read it). `cargo xtask scenario NAME`
//! builds and runs this.

use std::{path::Path, process::ExitCode};

use teardown_integration_tests::{gate, lab::scenarios, tracer};

fn list() {
    println!("Scenarios (cargo xtask scenario NAME):");
    for s in scenarios::ALL {
        println!("  {:>2}  {:<28} {}", s.number, s.name, s.about);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("--list" | "-l" | "list") => {
            list();
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") => {
            println!("usage: scenario --list | scenario NAME [--record FILE]");
            ExitCode::SUCCESS
        }
        Some(name) => {
            let Some(s) = scenarios::find(name) else {
                eprintln!("no scenario {name:?}");
                list();
                return ExitCode::from(2);
            };
            if !gate::can_run_as(name, gate::LAB) {
                return ExitCode::from(2);
            }
            match &args[1..] {
                [] => {}
                [flag, file] if flag == "--record" => tracer::record_next(Path::new(file)),
                _ => {
                    eprintln!("usage: scenario NAME [--record FILE]");
                    return ExitCode::from(2);
                }
            }
            println!("scenario {} (#{}): {}\n", s.name, s.number, s.about);
            match std::panic::catch_unwind(s.run) {
                Ok(()) => {
                    println!(
                        "\nscenario {}: PASS (timeline, sequence numbers and verdicts as expected)",
                        s.name
                    );
                    ExitCode::SUCCESS
                }
                Err(_) => {
                    println!("\nscenario {}: FAIL (see the message above)", s.name);
                    ExitCode::FAILURE
                }
            }
        }
    }
}
