//! `cargo xtask bench` (being written).

use anyhow::Result;

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {}

pub fn bench(_args: BenchArgs) -> Result<()> {
    anyhow::bail!("not yet")
}
