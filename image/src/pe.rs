//! Just enough PE/COFF to place UKI sections after the stub's own sections and to make objcopy's
//! output reproducible (fixed COFF timestamp, recomputed optional-header checksum). The parser
//! lives in the shared `cairn-pe` crate, which the device also uses to predict the PCR 11 value
//! of a new UKI ([`predict_uki_pcr11`]); this module re-exports it for the build steps.

pub use cairn_pe::{
    align_up, append_addresses, checksum, layout, normalize, predict_uki_pcr11, sections,
    timestamp, PeError, PeLayout, Section,
};
