//! How xtask starts Debian's chromium: headless, as root, on a machine without a network.

/// The flags (then `--user-data-dir=` a new empty directory): no sandbox (root), no GPU, and
/// none of chromium's own background connections, which a closed network refuses.
pub const HEADLESS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];
