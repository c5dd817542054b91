//! nftables rules inside one namespace: drop chosen segments at precise moments.
//!
//! Every rule lives in the table `inet tdlab`, chain `input` (hook input): a segment is dropped
//! on arrival, so the sender really sent it and its retransmission timer runs as on a lossy
//! network (a drop in the sender's own output hook would fail the send instead). Rules are
//! added and deleted by handle while the test runs; [`Nft::drop_first`] drops only the first N
//! matching segments of each flow, decided in the kernel (no race with a retransmission).

use std::{
    io,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::netns::Netns;

static SETS: AtomicU32 = AtomicU32::new(0);

const TABLE: &str = "tdlab";
const CHAIN: &str = "input";

/// A rule, by handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule(pub u64);

/// The lab's nftables table in one namespace.
pub struct Nft<'a> {
    ns: &'a Netns,
}

impl<'a> Nft<'a> {
    /// Creates the table and chain if they are not there yet.
    pub fn new(ns: &'a Netns) -> io::Result<Nft<'a>> {
        let n = Nft { ns };
        n.nft(&["add", "table", "inet", TABLE])?;
        n.nft(&[
            "add",
            "chain",
            "inet",
            TABLE,
            CHAIN,
            "{ type filter hook input priority 0; policy accept; }",
        ])?;
        Ok(n)
    }

    fn nft(&self, args: &[&str]) -> io::Result<String> {
        let mut a = vec!["nft"];
        a.extend_from_slice(args);
        self.ns.exec(&a)
    }

    /// Adds `MATCH counter drop` (e.g. `tcp dport 20001 tcp flags & fin == fin`).
    pub fn drop(&self, matcher: &str) -> io::Result<Rule> {
        self.add(&format!("{matcher} counter drop"))
    }

    /// Adds a rule (nft syntax after `add rule inet tdlab input`); returns its handle.
    pub fn add(&self, rule: &str) -> io::Result<Rule> {
        let out = self.nft(&[
            "--echo", "--handle", "add", "rule", "inet", TABLE, CHAIN, rule,
        ])?;
        out.lines()
            .find_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.trim().parse()))
            .and_then(Result::ok)
            .map(Rule)
            .ok_or_else(|| io::Error::other(format!("no handle in nft's answer: {out}")))
    }

    /// Drops only the first `n` segments matching `matcher` of each flow (per source and
    /// destination port): one rule per drop, each remembering the flows it dropped in its own
    /// dynamic set. Returns the rules (their counters say how many were dropped).
    pub fn drop_first(&self, n: usize, matcher: &str) -> io::Result<Vec<Rule>> {
        let mut rules = Vec::with_capacity(n);
        for _ in 0..n {
            let set = format!("once{}", SETS.fetch_add(1, Ordering::Relaxed));
            self.nft(&[
                "add",
                "set",
                "inet",
                TABLE,
                &set,
                "{ type inet_service . inet_service; flags dynamic; }",
            ])?;
            rules.push(self.add(&format!(
                "{matcher} tcp sport . tcp dport != @{set} add @{set} {{ tcp sport . tcp dport }} \
                 counter drop"
            ))?);
        }
        Ok(rules)
    }

    /// Deletes a rule.
    pub fn delete(&self, rule: Rule) -> io::Result<()> {
        self.nft(&[
            "delete",
            "rule",
            "inet",
            TABLE,
            CHAIN,
            "handle",
            &rule.0.to_string(),
        ])
        .map(drop)
    }

    /// Packets counted by a rule so far.
    pub fn packets(&self, rule: Rule) -> io::Result<u64> {
        let out = self.nft(&["--handle", "list", "chain", "inet", TABLE, CHAIN])?;
        let tag = format!("# handle {}", rule.0);
        out.lines()
            .find(|l| l.trim_end().ends_with(&tag))
            .and_then(|l| l.split_once("counter packets "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other(format!("rule {} not found: {out}", rule.0)))
    }

    /// Packets counted by several rules.
    pub fn total(&self, rules: &[Rule]) -> io::Result<u64> {
        rules.iter().map(|r| self.packets(*r)).sum()
    }
}
