//! Just enough PE/COFF (EFI executables) to place UKI sections after the stub's own sections and
//! to make objcopy's output reproducible (fixed COFF timestamp, recomputed optional-header
//! checksum).

/// The file is not a PE32+ image we understand.
#[derive(Debug, thiserror::Error)]
pub enum PeError {
    /// Header fields point outside the file or have unexpected values.
    #[error("not a PE32+ EFI image: {0}")]
    Malformed(&'static str),
}

/// Layout facts of a PE32+ image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeLayout {
    /// Preferred load address.
    pub image_base: u64,
    /// Alignment of sections in memory.
    pub section_alignment: u64,
    /// First virtual address after the last section (relative to image_base), aligned.
    pub end_of_sections: u64,
}

struct Offsets {
    coff: usize,
    optional: usize,
    sections: usize,
    count: usize,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, PeError> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(PeError::Malformed("truncated header"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, PeError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(PeError::Malformed("truncated header"))
}

fn offsets(data: &[u8]) -> Result<Offsets, PeError> {
    if data.get(0..2) != Some(b"MZ") {
        return Err(PeError::Malformed("no MZ signature"));
    }
    let pe = u32_at(data, 0x3c)? as usize;
    if data.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(PeError::Malformed("no PE signature"));
    }
    let coff = pe + 4;
    let count = u16_at(data, coff + 2)? as usize;
    let optional_size = u16_at(data, coff + 16)? as usize;
    let optional = coff + 20;
    if u16_at(data, optional)? != 0x20b {
        return Err(PeError::Malformed("not PE32+ (optional header magic)"));
    }
    let sections = optional + optional_size;
    if data.len() < sections + count * 40 {
        return Err(PeError::Malformed("section table past end of file"));
    }
    Ok(Offsets {
        coff,
        optional,
        sections,
        count,
    })
}

/// Read the layout of a PE32+ image.
pub fn layout(data: &[u8]) -> Result<PeLayout, PeError> {
    let o = offsets(data)?;
    let image_base =
        u32_at(data, o.optional + 24)? as u64 | (u32_at(data, o.optional + 28)? as u64) << 32;
    let section_alignment = u32_at(data, o.optional + 32)? as u64;
    if section_alignment == 0 || !section_alignment.is_power_of_two() {
        return Err(PeError::Malformed("bad section alignment"));
    }
    let mut end = 0u64;
    for i in 0..o.count {
        let s = o.sections + i * 40;
        let virtual_size = u32_at(data, s + 8)? as u64;
        let virtual_address = u32_at(data, s + 12)? as u64;
        end = end.max(virtual_address + virtual_size);
    }
    Ok(PeLayout {
        image_base,
        section_alignment,
        end_of_sections: align_up(end, section_alignment),
    })
}

/// Round `value` up to a multiple of `align` (a power of two).
pub fn align_up(value: u64, align: u64) -> u64 {
    (value + align - 1) & !(align - 1)
}

/// Set the COFF timestamp to `timestamp` and recompute the optional header checksum, so that
/// the same inputs always give the same bytes.
pub fn normalize(data: &mut [u8], timestamp: u32) -> Result<(), PeError> {
    let o = offsets(data)?;
    data[o.coff + 4..o.coff + 8].copy_from_slice(&timestamp.to_le_bytes());
    let checksum_at = o.optional + 64;
    data[checksum_at..checksum_at + 4].copy_from_slice(&[0; 4]);
    let sum = checksum(data, checksum_at);
    data[checksum_at..checksum_at + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE image checksum (as in `imagehlp!CheckSumMappedFile`), skipping the checksum field.
pub fn checksum(data: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < data.len() {
        if i == checksum_at || i == checksum_at + 2 {
            i += 2;
            continue;
        }
        let word = if i + 1 < data.len() {
            u16::from_le_bytes([data[i], data[i + 1]])
        } else {
            data[i] as u16
        };
        sum += word as u64;
        sum = (sum & 0xffff) + (sum >> 16);
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

/// The COFF timestamp of an image.
pub fn timestamp(data: &[u8]) -> Result<u32, PeError> {
    let o = offsets(data)?;
    u32_at(data, o.coff + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ header with one section.
    fn tiny_pe() -> Vec<u8> {
        let mut d = vec![0u8; 1024];
        d[0..2].copy_from_slice(b"MZ");
        d[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        d[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        d[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        d[coff + 4..coff + 8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        d[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        d[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        d[opt + 24..opt + 32].copy_from_slice(&0x1_4000_0000u64.to_le_bytes());
        d[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        let sec = opt + 240;
        d[sec..sec + 5].copy_from_slice(b".text");
        d[sec + 8..sec + 12].copy_from_slice(&0x1800u32.to_le_bytes());
        d[sec + 12..sec + 16].copy_from_slice(&0x1000u32.to_le_bytes());
        d
    }

    #[test]
    fn reads_layout() {
        let l = layout(&tiny_pe()).unwrap();
        assert_eq!(
            l,
            PeLayout {
                image_base: 0x1_4000_0000,
                section_alignment: 0x1000,
                end_of_sections: 0x3000
            }
        );
    }

    #[test]
    fn normalize_is_stable_and_sets_timestamp() {
        let mut a = tiny_pe();
        let mut b = tiny_pe();
        b[0x84 + 4] = 0x99;
        normalize(&mut a, 0).unwrap();
        normalize(&mut b, 0).unwrap();
        assert_eq!(a, b);
        assert_eq!(timestamp(&a).unwrap(), 0);
        assert!(layout(b"not a pe").is_err());
    }
}
