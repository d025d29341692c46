//! The kernel's own names for drop reasons: `enum skb_drop_reason`, read
//! from the kernel's BTF (`/sys/kernel/btf/vmlinux`), so names follow the
//! running kernel rather than a copy of its headers.

use std::collections::BTreeMap;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The members of enum `name`, value → name with `strip` removed from the
/// front. Empty when the blob is not BTF or has no such enum.
pub fn enum_values(btf: &[u8], name: &str, strip: &str) -> BTreeMap<u32, String> {
    parse(btf, name, strip).unwrap_or_default()
}

fn parse(btf: &[u8], wanted: &str, strip: &str) -> Option<BTreeMap<u32, String>> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(btf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(btf.get(at..at + 4)?.try_into().ok()?));
    if u16_at(0)? != BTF_MAGIC {
        return None;
    }
    let hdr_len = u32_at(4)? as usize;
    let type_off = u32_at(8)? as usize;
    let type_len = u32_at(12)? as usize;
    let str_off = u32_at(16)? as usize;
    let str_len = u32_at(20)? as usize;
    let types = hdr_len.checked_add(type_off)?;
    let types_end = types.checked_add(type_len)?;
    let strings = btf.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
    let string = |off: u32| -> Option<&str> {
        let rest = strings.get(off as usize..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    };
    let mut at = types;
    while at + 12 <= types_end {
        let name_off = u32_at(at)?;
        let info = u32_at(at + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let members = at + 12;
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
            _ => 0,
        };
        if kind == KIND_ENUM && string(name_off) == Some(wanted) {
            let mut out = BTreeMap::new();
            for i in 0..vlen {
                let member = members + 8 * i;
                let name = string(u32_at(member)?)?;
                let value = u32_at(member + 4)?;
                out.insert(value, name.strip_prefix(strip).unwrap_or(name).to_owned());
            }
            return Some(out);
        }
        at = members + extra;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A BTF blob: an int, then enum `e` { P_A = 2, P_B = 3 }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0e\0P_A\0P_B\0".to_vec();
        let mut types = Vec::new();
        let mut put = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // int: name, info, size, then its encoding word.
        put(&[1, KIND_INT << 24, 4, 0x20]);
        // enum e, two members: (name, value) pairs.
        put(&[5, (KIND_ENUM << 24) | 2, 4, 7, 2, 11, 3]);
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_enum_members() {
        let values = enum_values(&blob(), "e", "P_");
        assert_eq!(values.get(&2).map(String::as_str), Some("A"));
        assert_eq!(values.get(&3).map(String::as_str), Some("B"));
        assert!(enum_values(&blob(), "other", "").is_empty());
        assert!(enum_values(b"not btf at all, really", "e", "").is_empty());
        let truncated = blob();
        assert!(enum_values(&truncated[..30], "e", "").is_empty());
    }

    #[test]
    fn reads_the_running_kernel_when_present() {
        let Ok(btf) = std::fs::read(VMLINUX) else {
            return;
        };
        let reasons = enum_values(&btf, "skb_drop_reason", "SKB_DROP_REASON_");
        assert_eq!(reasons.get(&2).map(String::as_str), Some("NOT_SPECIFIED"));
        assert!(reasons.values().any(|r| r == "NO_SOCKET"));
    }
}
