//! Harness for the root/kernel integration tests: the one gate that says whether a test can run
//! here, the real tracer, network namespaces, and bounded waits.
pub mod browser;
pub mod cli;
pub mod containers;
pub mod gate;
pub mod lab;
pub mod loopback;
pub mod netns;
pub mod prometheus;
pub mod tracer;
pub mod unprivileged;
pub mod wait;
