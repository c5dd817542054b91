//! Harness for the root/kernel integration tests: the kernel gate, the real tracer, and
//! network namespaces.
pub mod cli;
pub mod kernel;
pub mod lab;
pub mod netns;
pub mod tracer;
