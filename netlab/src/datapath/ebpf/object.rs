//! What the loader needs to know of the eBPF object before aya parses it:
//! whether it carries CO-RE relocations (the only use aya 0.14 makes of the
//! kernel's BTF, which [`super::loader::EarlyLoader`] hides from aya when
//! the object has none).
//!
//! Only as much ELF64 (little-endian) and `.BTF.ext` as that takes; every
//! offset is checked, so a truncated or foreign file gives `None`.

/// The magic number of a `.BTF.ext` header.
const BTF_EXT_MAGIC: u16 = 0xeb9f;

/// Bytes of CO-RE relocation records in `object`'s `.BTF.ext`: 0 when it
/// has none, `None` when `object` is not an ELF64 object with a
/// `.BTF.ext` section this code can read.
pub fn core_relocation_bytes(object: &[u8]) -> Option<u32> {
    let ext = section(object, ".BTF.ext")?;
    if u16_at(ext, 0)? != BTF_EXT_MAGIC {
        return None;
    }
    // btf_ext_header: magic, version, flags, hdr_len, then the offset and
    // length of func_info, of line_info and, in a header of 32 bytes or
    // more, of core_relo.
    let header_len = u32_at(ext, 4)?;
    if header_len < 32 {
        return Some(0);
    }
    u32_at(ext, 28)
}

/// The bytes of ELF section `name`.
fn section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let table = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let entry = usize::from(u16_at(elf, 0x3a)?);
    let count = usize::from(u16_at(elf, 0x3c)?);
    let names = usize::from(u16_at(elf, 0x3e)?);
    let header = |i: usize| table.checked_add(i.checked_mul(entry)?);
    let names_at = usize::try_from(u64_at(elf, header(names)?.checked_add(0x18)?)?).ok()?;
    (0..count).find_map(|i| {
        let at = header(i)?;
        let name_at = names_at.checked_add(usize::try_from(u32_at(elf, at)?).ok()?)?;
        let rest = elf.get(name_at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (&rest[..end] == name.as_bytes()).then_some(())?;
        let start = usize::try_from(u64_at(elf, at.checked_add(0x18)?)?).ok()?;
        let len = usize::try_from(u64_at(elf, at.checked_add(0x20)?)?).ok()?;
        elf.get(start..start.checked_add(len)?)
    })
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 image: the null section, `.shstrtab` and one
    /// `.BTF.ext` section holding `ext`.
    fn elf_with_btf_ext(ext: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.BTF.ext\0";
        let names_at = 64;
        let ext_at = names_at + names.len();
        let table = ext_at + ext.len();
        let mut elf = vec![0u8; table + 3 * 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[0x28..0x30].copy_from_slice(&(table as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf[names_at..ext_at].copy_from_slice(names);
        elf[ext_at..table].copy_from_slice(ext);
        let mut header = |i: usize, name: u32, at: usize, len: usize| {
            let h = table + i * 64;
            elf[h..h + 4].copy_from_slice(&name.to_le_bytes());
            elf[h + 0x18..h + 0x20].copy_from_slice(&(at as u64).to_le_bytes());
            elf[h + 0x20..h + 0x28].copy_from_slice(&(len as u64).to_le_bytes());
        };
        header(1, 1, names_at, names.len());
        header(2, 11, ext_at, ext.len());
        elf
    }

    fn btf_ext(header_len: u32, core_relo_len: u32) -> Vec<u8> {
        let mut ext = vec![0u8; 32];
        ext[..2].copy_from_slice(&BTF_EXT_MAGIC.to_le_bytes());
        ext[4..8].copy_from_slice(&header_len.to_le_bytes());
        ext[28..32].copy_from_slice(&core_relo_len.to_le_bytes());
        ext
    }

    #[test]
    fn reads_the_core_relocation_length() {
        assert_eq!(
            core_relocation_bytes(&elf_with_btf_ext(&btf_ext(32, 0))),
            Some(0)
        );
        assert_eq!(
            core_relocation_bytes(&elf_with_btf_ext(&btf_ext(32, 96))),
            Some(96)
        );
        // An older header has no core_relo fields at all.
        assert_eq!(
            core_relocation_bytes(&elf_with_btf_ext(&btf_ext(24, 96))),
            Some(0)
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        assert_eq!(core_relocation_bytes(&[]), None);
        assert_eq!(core_relocation_bytes(b"not an object"), None);
        let mut wrong_magic = btf_ext(32, 0);
        wrong_magic[0] = 0;
        assert_eq!(core_relocation_bytes(&elf_with_btf_ext(&wrong_magic)), None);
        // Every cut of a good image fails cleanly, never panics.
        let good = elf_with_btf_ext(&btf_ext(32, 0));
        for len in 0..good.len() {
            let _ = core_relocation_bytes(&good[..len]);
        }
        let mut huge = good.clone();
        huge[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(core_relocation_bytes(&huge), None);
    }
}
