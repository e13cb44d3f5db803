//! The section table, and a section's bytes as the firmware maps them into memory.

use std::borrow::Cow;

use crate::{offsets, u32_at, PeError, SECTION_HEADER_LEN};

/// One entry of the section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The 8-byte name field, NUL-padded (names longer than 8 bytes are `/<n>` string-table
    /// references, which Cairn's UKI sections never need).
    pub name: [u8; 8],
    /// `VirtualSize`: the section's size in memory.
    pub virtual_size: u32,
    /// `VirtualAddress`, relative to the image base.
    pub virtual_address: u32,
    /// `SizeOfRawData`: bytes stored in the file (rounded up to the file alignment).
    pub size_of_raw_data: u32,
    /// `PointerToRawData`: file offset of the stored bytes.
    pub pointer_to_raw_data: u32,
}

impl Section {
    /// The name as text, without the NUL padding.
    pub fn name_str(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(8);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    /// The section's bytes as mapped into memory by an EFI loader: `VirtualSize` bytes, read from
    /// the file at `PointerToRawData`, zero-filled past `SizeOfRawData` (file padding beyond
    /// `VirtualSize` is not part of it). Borrowed from `file` unless zero-filling was needed.
    ///
    /// # Errors
    /// [`PeError::SectionOutsideFile`] when the stored bytes lie beyond the end of `file`.
    pub fn memory_image<'a>(&self, file: &'a [u8]) -> Result<Cow<'a, [u8]>, PeError> {
        let stored = self.size_of_raw_data.min(self.virtual_size) as usize;
        let start = self.pointer_to_raw_data as usize;
        let bytes = start
            .checked_add(stored)
            .and_then(|end| file.get(start..end))
            .ok_or_else(|| PeError::SectionOutsideFile {
                name: self.name_str(),
                offset: u64::from(self.pointer_to_raw_data),
                len: stored as u64,
                file_len: file.len() as u64,
            })?;
        if stored == self.virtual_size as usize {
            return Ok(Cow::Borrowed(bytes));
        }
        let mut mapped = bytes.to_vec();
        mapped.resize(self.virtual_size as usize, 0);
        Ok(Cow::Owned(mapped))
    }
}

/// The section table of a PE32+ image, in table order.
///
/// # Errors
/// [`PeError::Malformed`] when the headers are not those of a PE32+ image.
pub fn sections(data: &[u8]) -> Result<Vec<Section>, PeError> {
    let o = offsets(data)?;
    (0..o.count)
        .map(|i| {
            let s = o.sections + i * SECTION_HEADER_LEN;
            let mut name = [0u8; 8];
            name.copy_from_slice(&data[s..s + 8]);
            Ok(Section {
                name,
                virtual_size: u32_at(data, s + 8)?,
                virtual_address: u32_at(data, s + 12)?,
                size_of_raw_data: u32_at(data, s + 16)?,
                pointer_to_raw_data: u32_at(data, s + 20)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pe;

    #[test]
    fn lists_sections_with_their_fields() {
        let pe = test_pe(
            &[
                (".text", 0x10, 0x1000, 0x200, 0x400),
                (".linux", 3, 0x2000, 0x200, 0x600),
            ],
            0x800,
        );
        let table = sections(&pe).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table[1].name_str(), ".linux");
        assert_eq!(table[1].virtual_size, 3);
        assert_eq!(table[1].virtual_address, 0x2000);
        assert_eq!(table[1].size_of_raw_data, 0x200);
        assert_eq!(table[1].pointer_to_raw_data, 0x600);
        assert!(sections(b"MZ but nothing else").is_err());
    }

    #[test]
    fn memory_image_is_virtual_size_bytes_zero_filled() {
        let mut pe = test_pe(
            &[
                // objcopy's shape: raw data padded to the file alignment, VirtualSize exact.
                (".cmdline", 3, 0x1000, 0x200, 0x400),
                // .bss-like: more in memory than in the file.
                (".data", 6, 0x2000, 2, 0x600),
            ],
            0x800,
        );
        pe[0x400..0x404].copy_from_slice(b"abcX");
        pe[0x600..0x603].copy_from_slice(b"xyz");
        let table = sections(&pe).unwrap();
        let cmdline = table[0].memory_image(&pe).unwrap();
        assert_eq!(&*cmdline, b"abc");
        assert!(matches!(cmdline, Cow::Borrowed(_)));
        assert_eq!(&*table[1].memory_image(&pe).unwrap(), b"xy\0\0\0\0");
    }

    #[test]
    fn raw_data_past_the_end_is_an_error() {
        let pe = test_pe(&[(".initrd", 0x300, 0x1000, 0x300, 0x700)], 0x800);
        let err = sections(&pe).unwrap()[0].memory_image(&pe).unwrap_err();
        assert!(
            matches!(&err, PeError::SectionOutsideFile { name, .. } if name == ".initrd"),
            "{err:?}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
