//! Field offsets of `struct sock` and `struct tcp_sock`, resolved from the running kernel's BTF.
//!
//! The layout of these structures changes between kernel builds, so nothing is hard-coded: each
//! field is found by name, through anonymous unions and structs, and embedded structures.

use std::path::Path;

use btf_rs::{Btf, Type};
use teardown_common::{SockOffsets, TcpState, TwOffsets, OFFSET_UNKNOWN};

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read the kernel's BTF at {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(&'static str),
}

/// Offsets resolved, plus the fields that could not be (each named).
#[derive(Clone, Debug)]
pub struct Resolved {
    pub offsets: SockOffsets,
    /// Offset of `skc_state` (a byte), for events that are not state changes.
    pub skc_state: u32,
    pub missing: Vec<&'static str>,
    /// Whether the kernel numbers the TCP states as the programs and the decoder do.
    pub state_numbers: StateNumbers,
    /// Whether `tcp_send_reset` fires for every reset the kernel sends ([`traces_every_reset`]).
    pub every_reset_traced: bool,
    /// Where a timewait socket's timer and substate are, and the timer's fields.
    pub tw: TwOffsets,
}

impl Resolved {
    /// The sequence fields could all be read.
    pub fn has_seq(&self) -> bool {
        let o = &self.offsets;
        [o.snd_una, o.snd_nxt, o.rcv_nxt, o.write_seq]
            .iter()
            .all(|&x| x != OFFSET_UNKNOWN)
    }
}

/// Strips typedefs and qualifiers down to a struct or union.
fn as_struct(btf: &Btf, mut t: Type) -> Option<btf_rs::Struct> {
    for _ in 0..16 {
        t = match t {
            Type::Struct(s) | Type::Union(s) => return Some(s),
            Type::Typedef(x) => btf.resolve_chained_type(&x).ok()?,
            Type::Const(x) => btf.resolve_chained_type(&x).ok()?,
            Type::Volatile(x) => btf.resolve_chained_type(&x).ok()?,
            _ => return None,
        };
    }
    None
}

/// Bit offset of member `name` in `s`, looking into anonymous members too.
fn member_bits(btf: &Btf, s: &btf_rs::Struct, name: &str, depth: u32) -> Option<(u32, Type)> {
    if depth > 8 {
        return None;
    }
    for m in &s.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            let ty = btf.resolve_chained_type(m).ok()?;
            return Some((m.bit_offset(), ty));
        }
        if mname.is_empty() {
            let inner = btf
                .resolve_chained_type(m)
                .ok()
                .and_then(|t| as_struct(btf, t));
            if let Some(inner) = inner {
                if let Some((bits, ty)) = member_bits(btf, &inner, name, depth + 1) {
                    return Some((m.bit_offset() + bits, ty));
                }
            }
        }
    }
    None
}

/// Byte offset of `path` (e.g. `["__sk_common", "skc_family"]`) from the start of struct `root`.
pub fn offset_of(btf: &Btf, root: &str, path: &[&str]) -> Option<u32> {
    let types = btf.resolve_types_by_name(root).ok()?;
    let mut cur = types.into_iter().find_map(|t| match t {
        Type::Struct(s) => Some(s),
        _ => None,
    })?;
    let mut bits = 0u32;
    for (i, field) in path.iter().enumerate() {
        let (b, ty) = member_bits(btf, &cur, field, 0)?;
        bits += b;
        if i + 1 < path.len() {
            cur = as_struct(btf, ty)?;
        }
    }
    bits.is_multiple_of(8).then_some(bits / 8)
}

/// `enum sock_flags` numbers SOCK_DEAD and SOCK_DONE as teardown expects.
fn sock_flags_match(btf: &Btf) -> bool {
    let Ok(types) = btf.resolve_types_by_name("sock_flags") else {
        return false;
    };
    let Some(e) = types.into_iter().find_map(|t| match t {
        Type::Enum(e) => Some(e),
        _ => None,
    }) else {
        return false;
    };
    let value = |name: &str| {
        e.members
            .iter()
            .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == name))
            .map(|m| m.val())
    };
    let bit = |mask: u32| mask.trailing_zeros();
    value("SOCK_DEAD") == Some(bit(teardown_common::sock_flag::DEAD))
        && value("SOCK_DONE") == Some(bit(teardown_common::sock_flag::DONE))
}

/// How the running kernel numbers the TCP states, against [`TcpState`]'s numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateNumbers {
    /// Every state the kernel's BTF names has the number teardown gives it.
    Match,
    /// The BTF has no enum of TCP states (nothing to check against).
    Unknown,
    /// States the kernel numbers otherwise: (name, the kernel's number, ours).
    Differ(Vec<(&'static str, u32, u8)>),
}

/// Finds the kernel's enum of TCP states (`TCP_ESTABLISHED = 1, ...`, an anonymous enum in
/// `include/net/tcp_states.h`) and compares it with [`TcpState`]. States the kernel does not have
/// (`TCP_BOUND_INACTIVE` before 6.8) are not a difference: their events never come.
pub fn tcp_state_numbers(btf: &Btf) -> StateNumbers {
    // The enum has no name to look it up by: scan the types, which btf-rs holds in memory.
    let mut id = 1;
    while let Ok(t) = btf.resolve_type_by_id(id) {
        id += 1;
        let Type::Enum(e) = t else { continue };
        let value = |name: &str| {
            e.members
                .iter()
                .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == name))
                .map(|m| m.val())
        };
        if value(TcpState::Established.kernel_name()).is_none() {
            continue;
        }
        let differ: Vec<_> = TcpState::ALL
            .iter()
            .filter_map(|s| {
                let theirs = value(s.kernel_name())?;
                (theirs != u32::from(s.kernel_number())).then_some((
                    s.kernel_name(),
                    theirs,
                    s.kernel_number(),
                ))
            })
            .collect();
        return if differ.is_empty() {
            StateNumbers::Match
        } else {
            StateNumbers::Differ(differ)
        };
    }
    StateNumbers::Unknown
}

/// Whether the kernel's `tcp_send_reset` tracepoint fires for every reset it sends, whatever
/// socket sends it (a TIME_WAIT or request socket, or none), rather than for full sockets only.
///
/// Kernels changed that in 6.10, in the same series that gave the tracepoint its third argument,
/// the reason for the reset: a prototype (`btf_trace_tcp_send_reset`, the hidden first argument
/// included) with four parameters is the kernel that traces them all. One with three may be
/// either; it is taken for the older kind, so that the user is told what may be missing.
pub fn traces_every_reset(btf: &Btf) -> bool {
    let Ok(types) = btf.resolve_types_by_name("btf_trace_tcp_send_reset") else {
        return false;
    };
    types.into_iter().any(|t| {
        let mut t = t;
        for _ in 0..4 {
            t = match t {
                Type::FuncProto(f) => return f.parameters.len() >= 4,
                Type::Typedef(x) => match btf.resolve_chained_type(&x) {
                    Ok(next) => next,
                    Err(_) => return false,
                },
                Type::Ptr(x) => match btf.resolve_chained_type(&x) {
                    Ok(next) => next,
                    Err(_) => return false,
                },
                _ => return false,
            };
        }
        false
    })
}

/// The timewait timer programs' offsets; a field not found stays unknown (and those programs
/// are then not attached).
pub fn tw_offsets(btf: &Btf) -> TwOffsets {
    let get = |root: &str, path: &[&str]| offset_of(btf, root, path).unwrap_or(OFFSET_UNKNOWN);
    TwOffsets {
        tw_timer: get("inet_timewait_sock", &["tw_timer"]),
        tw_substate: get("inet_timewait_sock", &["tw_substate"]),
        timer_function: get("timer_list", &["function"]),
        timer_expires: get("timer_list", &["expires"]),
        net_refs: offset_of(btf, "net", &["ns", "__ns_ref"])
            .or_else(|| offset_of(btf, "net", &["ns", "count"]))
            .unwrap_or(OFFSET_UNKNOWN),
    }
}

/// Resolves every offset the kernel programs use.
pub fn resolve(path: &Path) -> Result<Resolved, BtfError> {
    let btf = Btf::from_file(path).map_err(|e| BtfError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    resolve_from(&btf)
}

pub fn resolve_from(btf: &Btf) -> Result<Resolved, BtfError> {
    if btf.resolve_types_by_name("sock").is_err() {
        return Err(BtfError::NoStruct("sock"));
    }
    let mut missing = Vec::new();
    let mut get = |name: &'static str, root: &str, path: &[&str]| {
        offset_of(btf, root, path).unwrap_or_else(|| {
            missing.push(name);
            OFFSET_UNKNOWN
        })
    };
    let common = |f: &'static str| ["__sk_common", f];
    let offsets = SockOffsets {
        skc_family: get("skc_family", "sock", &common("skc_family")),
        skc_num: get("skc_num", "sock", &common("skc_num")),
        skc_dport: get("skc_dport", "sock", &common("skc_dport")),
        skc_rcv_saddr: get("skc_rcv_saddr", "sock", &common("skc_rcv_saddr")),
        skc_daddr: get("skc_daddr", "sock", &common("skc_daddr")),
        skc_v6_rcv_saddr: get("skc_v6_rcv_saddr", "sock", &common("skc_v6_rcv_saddr")),
        skc_v6_daddr: get("skc_v6_daddr", "sock", &common("skc_v6_daddr")),
        skc_flags: get("skc_flags", "sock", &common("skc_flags")),
        sk_protocol: get("sk_protocol", "sock", &["sk_protocol"]),
        sk_err: get("sk_err", "sock", &["sk_err"]),
        // struct tcp_sock begins with its struct sock, so these are offsets from the socket too.
        snd_una: get("snd_una", "tcp_sock", &["snd_una"]),
        snd_nxt: get("snd_nxt", "tcp_sock", &["snd_nxt"]),
        rcv_nxt: get("rcv_nxt", "tcp_sock", &["rcv_nxt"]),
        write_seq: get("write_seq", "tcp_sock", &["write_seq"]),
        // Optional: without them events carry no network namespace (said on its own).
        skc_net: offset_of(btf, "sock", &["__sk_common", "skc_net", "net"])
            .unwrap_or(OFFSET_UNKNOWN),
        net_inum: offset_of(btf, "net", &["ns", "inum"]).unwrap_or(OFFSET_UNKNOWN),
        fast: 0,
    };
    let skc_state = get("skc_state", "sock", &common("skc_state"));
    let mut offsets = offsets;
    // The agent reads SOCK_DEAD and SOCK_DONE out of sk_flags at the bit numbers of
    // teardown_common::sock_flag; a kernel that numbers them otherwise gets no flags at all
    // rather than wrong ones.
    if !sock_flags_match(btf) {
        missing.push("enum sock_flags (SOCK_DEAD = 0, SOCK_DONE = 1)");
        offsets.skc_flags = OFFSET_UNKNOWN;
    }
    let offsets = SockOffsets {
        fast: offsets.fast_bits(),
        ..offsets
    };
    Ok(Resolved {
        offsets,
        skc_state,
        missing,
        state_numbers: tcp_state_numbers(btf),
        every_reset_traced: traces_every_reset(btf),
        tw: tw_offsets(btf),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob of `types` and `strings`, behind its header.
    fn btf_blob(types: Vec<u8>, strings: Vec<u8>) -> Btf {
        let mut blob = vec![0x9f, 0xeb, 1, 0];
        let (type_len, str_len) = (types.len() as u32, strings.len() as u32);
        for word in [24, 0, type_len, type_len, str_len] {
            blob.extend_from_slice(&u32::to_le_bytes(word));
        }
        blob.extend(types);
        blob.extend(strings);
        Btf::from_bytes(&blob).unwrap()
    }

    /// A BTF blob holding one anonymous enum with `members` (name, value).
    fn btf_with_enum(members: &[(&str, u32)]) -> Btf {
        const BTF_KIND_ENUM: u32 = 6;
        let mut strings = vec![0u8];
        let mut types = Vec::new();
        let vlen = u32::try_from(members.len()).unwrap();
        for word in [0, BTF_KIND_ENUM << 24 | vlen, 4] {
            types.extend_from_slice(&u32::to_le_bytes(word));
        }
        for (name, value) in members {
            let name_off = u32::try_from(strings.len()).unwrap();
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            types.extend_from_slice(&name_off.to_le_bytes());
            types.extend_from_slice(&value.to_le_bytes());
        }
        btf_blob(types, strings)
    }

    /// A BTF blob holding `btf_trace_tcp_send_reset` as the kernel declares it: a typedef of a
    /// pointer to a function prototype with `params` parameters.
    fn btf_with_reset_tracepoint(params: u32) -> Btf {
        const BTF_KIND_PTR: u32 = 2;
        const BTF_KIND_TYPEDEF: u32 = 8;
        const BTF_KIND_FUNC_PROTO: u32 = 13;
        let name = b"btf_trace_tcp_send_reset\0";
        let mut strings = vec![0u8];
        let name_off = strings.len() as u32;
        strings.extend_from_slice(name);
        let mut words = vec![
            // [1] int, the parameters' type.
            0,
            1 << 24,
            4,
            (1 << 24) | 32,
            // [2] void (*)(int, ...): `params` parameters.
            0,
            BTF_KIND_FUNC_PROTO << 24 | params,
            0,
        ];
        for _ in 0..params {
            words.extend([0, 1]);
        }
        // [3] a pointer to [2]; [4] the typedef naming it.
        words.extend([
            0,
            BTF_KIND_PTR << 24,
            2,
            name_off,
            BTF_KIND_TYPEDEF << 24,
            3,
        ]);
        let types: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        btf_blob(types, strings)
    }

    #[test]
    fn a_reset_tracepoint_with_its_reason_traces_every_reset() {
        // 6.10 and later: (void *, sk, skb, reason).
        assert!(traces_every_reset(&btf_with_reset_tracepoint(4)));
        // Before: (void *, sk, skb), resets of full sockets only.
        assert!(!traces_every_reset(&btf_with_reset_tracepoint(3)));
        // No such tracepoint at all.
        assert!(!traces_every_reset(&btf_with_enum(&[("SOCK_DEAD", 0)])));
    }

    #[test]
    fn state_numbers_are_compared_name_by_name() {
        let ours: Vec<(&str, u32)> = TcpState::ALL
            .iter()
            .map(|s| (s.kernel_name(), u32::from(s.kernel_number())))
            .collect();
        assert_eq!(
            tcp_state_numbers(&btf_with_enum(&ours)),
            StateNumbers::Match
        );
        // A kernel without the newest state (TCP_BOUND_INACTIVE came in 6.8) still matches.
        let older = &ours[..ours.len() - 1];
        assert_eq!(
            tcp_state_numbers(&btf_with_enum(older)),
            StateNumbers::Match
        );
        let mut swapped = ours.clone();
        swapped[6].1 = 8;
        swapped[7].1 = 7;
        assert_eq!(
            tcp_state_numbers(&btf_with_enum(&swapped)),
            StateNumbers::Differ(vec![("TCP_CLOSE", 8, 7), ("TCP_CLOSE_WAIT", 7, 8)])
        );
        // An enum of something else is not mistaken for the states.
        let other = btf_with_enum(&[("SOCK_DEAD", 0), ("SOCK_DONE", 1)]);
        assert_eq!(tcp_state_numbers(&other), StateNumbers::Unknown);
    }
}
