//! Network namespace harness.
