//! Just enough PE/COFF (EFI executables) for Cairn's unified kernel images (UKIs), shared by the
//! image build (`cairn-image`) and the device (re-sealing the disk key before an OS update).
//!
//! - [`layout`], [`append_addresses`], [`normalize`], [`checksum`], [`timestamp`]: place UKI
//!   sections after the stub's own sections and make objcopy's output reproducible (fixed COFF
//!   timestamp, recomputed optional-header checksum).
//! - [`sections`] / [`Section`]: the section table, and a section's bytes as the firmware maps
//!   them into memory ([`Section::memory_image`]).
//! - [`predict_uki_pcr11`]: the PCR 11 value systemd-stub 252 leaves after measuring a UKI, and
//!   [`pcr11_after_phases`] for the boot phases `systemd-pcrphase` measures on top of it.
//!
//! Pure functions over bytes: no I/O, nothing blocks.

mod layout;
mod pcr11;
mod sections;

pub use layout::{align_up, append_addresses, checksum, layout, normalize, timestamp, PeLayout};
pub use pcr11::{
    pcr11_after_phases, predict_uki_pcr11, BOOT_PHASES, MEASURED_UKI_SECTIONS, UKI_PCR,
};
pub use sections::{sections, Section};

/// The file is not a PE32+ image we understand.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeError {
    /// Header fields point outside the file or have unexpected values.
    #[error(
        "not a PE32+ EFI image: {0}; check the file is an EFI stub or a unified kernel image \
         (`objdump -h` lists its sections) and was copied completely"
    )]
    Malformed(&'static str),

    /// A section's raw data lies (partly) beyond the end of the file.
    #[error(
        "PE section {name:?} claims {len} bytes at file offset {offset}, but the file has only \
         {file_len} bytes; the image is truncated or damaged: copy it again from the update \
         bundle"
    )]
    SectionOutsideFile {
        /// The section name.
        name: String,
        /// `PointerToRawData`.
        offset: u64,
        /// The bytes the section maps from the file.
        len: u64,
        /// The file length.
        file_len: u64,
    },
}

/// Little-endian `u16` at `at`.
pub(crate) fn u16_at(data: &[u8], at: usize) -> Result<u16, PeError> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(PeError::Malformed("truncated header"))
}

/// Little-endian `u32` at `at`.
pub(crate) fn u32_at(data: &[u8], at: usize) -> Result<u32, PeError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(PeError::Malformed("truncated header"))
}

/// Where the headers of a PE32+ image are.
pub(crate) struct Offsets {
    /// The COFF file header.
    pub(crate) coff: usize,
    /// The optional header.
    pub(crate) optional: usize,
    /// The section table.
    pub(crate) sections: usize,
    /// Number of section table entries.
    pub(crate) count: usize,
}

/// Size of one section table entry.
pub(crate) const SECTION_HEADER_LEN: usize = 40;

/// Find the headers, checking the MZ and PE signatures and the PE32+ magic.
pub(crate) fn offsets(data: &[u8]) -> Result<Offsets, PeError> {
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
    if data.len() < sections + count * SECTION_HEADER_LEN {
        return Err(PeError::Malformed("section table past end of file"));
    }
    Ok(Offsets {
        coff,
        optional,
        sections,
        count,
    })
}

/// A minimal PE32+ image for unit tests: headers and a section table with `sections`
/// (name, virtual size, virtual address, raw size, raw pointer); the file is `len` bytes.
#[cfg(test)]
pub(crate) fn test_pe(sections: &[(&str, u32, u32, u32, u32)], len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    d[0..2].copy_from_slice(b"MZ");
    d[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    d[0x80..0x84].copy_from_slice(b"PE\0\0");
    let coff = 0x84;
    d[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
    d[coff + 4..coff + 8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    d[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
    let opt = coff + 20;
    d[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    d[opt + 24..opt + 32].copy_from_slice(&0x1_4000_0000u64.to_le_bytes());
    d[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes());
    for (i, (name, vsize, vaddr, raw_size, raw_ptr)) in sections.iter().enumerate() {
        let s = opt + 240 + i * SECTION_HEADER_LEN;
        d[s..s + name.len()].copy_from_slice(name.as_bytes());
        d[s + 8..s + 12].copy_from_slice(&vsize.to_le_bytes());
        d[s + 12..s + 16].copy_from_slice(&vaddr.to_le_bytes());
        d[s + 16..s + 20].copy_from_slice(&raw_size.to_le_bytes());
        d[s + 20..s + 24].copy_from_slice(&raw_ptr.to_le_bytes());
    }
    d
}
