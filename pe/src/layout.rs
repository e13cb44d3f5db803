//! Image layout (where new sections go) and reproducible headers (timestamp, checksum).

use crate::{offsets, u32_at, PeError, SECTION_HEADER_LEN};

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

/// Read the layout of a PE32+ image.
///
/// # Errors
/// [`PeError::Malformed`] when the headers are not those of a PE32+ image.
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
        let s = o.sections + i * SECTION_HEADER_LEN;
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

/// The absolute virtual addresses (for `objcopy --change-section-vma`) of new sections of the
/// given sizes appended in order after the existing sections of an image with `layout`, each
/// starting on a section-alignment boundary.
pub fn append_addresses(layout: &PeLayout, sizes: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut offset = layout.end_of_sections;
    sizes
        .into_iter()
        .map(|size| {
            let address = layout.image_base + offset;
            offset = align_up(offset + size, layout.section_alignment);
            address
        })
        .collect()
}

/// Set the COFF timestamp to `timestamp` and recompute the optional header checksum, so that
/// the same inputs always give the same bytes.
///
/// # Errors
/// [`PeError::Malformed`] when the headers are not those of a PE32+ image.
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
///
/// # Errors
/// [`PeError::Malformed`] when the headers are not those of a PE32+ image.
pub fn timestamp(data: &[u8]) -> Result<u32, PeError> {
    let o = offsets(data)?;
    u32_at(data, o.coff + 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pe;

    /// A minimal PE32+ header with one section.
    fn tiny_pe() -> Vec<u8> {
        test_pe(&[(".text", 0x1800, 0x1000, 0, 0)], 1024)
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
    fn appended_sections_start_aligned_after_the_last_one() {
        let l = layout(&tiny_pe()).unwrap();
        assert_eq!(
            append_addresses(&l, [1, 0x1000, 0x1001, 5]),
            vec![0x1_4000_3000, 0x1_4000_4000, 0x1_4000_5000, 0x1_4000_7000]
        );
        assert!(append_addresses(&l, []).is_empty());
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
