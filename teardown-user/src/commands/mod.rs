//! One module per subcommand of the `teardown` binary.
pub mod output;
pub mod replay;
pub mod timewait;
pub mod top;
pub mod trace;
