//! The kernel's own names for drop reasons (`enum skb_drop_reason`) and
//! the place of a field in its structures (`sk_buff.cloned`), read from
//! the kernel's BTF (`/sys/kernel/btf/vmlinux`), so they follow the running
//! kernel rather than a copy of its headers.

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

/// The bit offset of member `member` of struct `name` (a direct member,
/// bitfield or not). `None` when absent.
pub fn member_bit_offset(btf: &[u8], name: &str, member: &str) -> Option<u32> {
    walk(btf, |view, kind, type_name, info, members| {
        if kind != KIND_STRUCT || type_name != Some(name) {
            return None;
        }
        let kind_flag = info >> 31 != 0;
        for i in 0..(info & 0xffff) as usize {
            let at = members + 12 * i;
            if view.string(view.u32_at(at)?) == Some(member) {
                let offset = view.u32_at(at + 8)?;
                return Some(if kind_flag {
                    offset & 0xff_ffff
                } else {
                    offset
                });
            }
        }
        None
    })
}

struct View<'a> {
    btf: &'a [u8],
    strings: &'a [u8],
}

impl View<'_> {
    fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.btf.get(at..at + 4)?.try_into().ok()?,
        ))
    }

    fn string(&self, off: u32) -> Option<&str> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

/// Calls `found(view, kind, name, info, first member's offset)` on every
/// type until it returns something.
fn walk<T>(
    btf: &[u8],
    mut found: impl FnMut(&View, u32, Option<&str>, u32, usize) -> Option<T>,
) -> Option<T> {
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
    let view = View { btf, strings };
    let mut at = types;
    while at + 12 <= types_end {
        let name_off = u32_at(at)?;
        let info = u32_at(at + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let members = at + 12;
        if let Some(out) = found(&view, kind, view.string(name_off), info, members) {
            return Some(out);
        }
        at = members
            + match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
    }
    None
}

fn parse(btf: &[u8], wanted: &str, strip: &str) -> Option<BTreeMap<u32, String>> {
    walk(btf, |view, kind, name, info, members| {
        if kind != KIND_ENUM || name != Some(wanted) {
            return None;
        }
        let mut out = BTreeMap::new();
        for i in 0..(info & 0xffff) as usize {
            let member = members + 8 * i;
            let name = view.string(view.u32_at(member)?)?;
            let value = view.u32_at(member + 4)?;
            out.insert(value, name.strip_prefix(strip).unwrap_or(name).to_owned());
        }
        Some(out)
    })
}

#[cfg(test)]
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
        let cloned = member_bit_offset(&btf, "sk_buff", "cloned").unwrap();
        let len = member_bit_offset(&btf, "sk_buff", "len").unwrap();
        assert!(cloned > len && cloned < 8 * 256, "{cloned}");
    }
}
