//! The command line, above every stage: one module per subcommand of the `teardown` binary,
//! each turning its clap arguments into calls of the library (the loops live in `live`).
pub mod args;
pub mod error;
pub mod output;
pub mod replay;
pub mod report;
pub mod timewait;
pub mod top;
pub mod trace;
