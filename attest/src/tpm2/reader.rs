//! A bounds-checked big-endian reader over one marshalled TPM structure: every read checks the
//! remaining length, every TPM2B checks its maximum, and the end refuses trailing bytes.

use super::WireError;

/// Cursor over the bytes of one structure; errors name `structure` and the field being read.
pub(crate) struct Reader<'a> {
    structure: &'static str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`, refused at once when longer than `max`.
    pub(crate) fn new(
        structure: &'static str,
        bytes: &'a [u8],
        max: usize,
    ) -> Result<Self, WireError> {
        if bytes.len() > max {
            return Err(WireError::TooLarge {
                structure,
                len: bytes.len(),
                max,
            });
        }
        Ok(Self {
            structure,
            bytes,
            pos: 0,
        })
    }

    /// The structure name, for errors raised by the caller.
    pub(crate) fn structure(&self) -> &'static str {
        self.structure
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let rest = &self.bytes[self.pos..];
        if rest.len() < n {
            return Err(WireError::Truncated {
                structure: self.structure,
                field,
                needed: n,
                available: rest.len(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// A UINT8.
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian UINT16.
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.array(field).map(u16::from_be_bytes)
    }

    /// A big-endian UINT32.
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.array(field).map(u32::from_be_bytes)
    }

    /// A big-endian UINT64.
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// A TPM2B: a UINT16 size, at most `max`, then that many bytes.
    pub(crate) fn sized(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(WireError::FieldTooLarge {
                structure: self.structure,
                field,
                len,
                max,
            });
        }
        self.take(len, field)
    }

    /// An error for a selector or value Cairn does not accept.
    pub(crate) fn unsupported(
        &self,
        field: &'static str,
        value: impl Into<u32>,
        accepted: &'static str,
    ) -> WireError {
        WireError::Unsupported {
            structure: self.structure,
            field,
            value: value.into(),
            accepted,
        }
    }

    /// Ends the structure; refuses bytes after it.
    pub(crate) fn finish(self) -> Result<(), WireError> {
        let count = self.bytes.len() - self.pos;
        if count != 0 {
            return Err(WireError::TrailingBytes {
                structure: self.structure,
                count,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_big_endian() {
        let bytes = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07];
        let mut r = Reader::new("T", &bytes, 16).unwrap();
        assert_eq!(r.u8("a").unwrap(), 0x01);
        assert_eq!(r.u16("b").unwrap(), 0x0203);
        assert_eq!(r.u32("c").unwrap(), 0x0405_0607);
        r.finish().unwrap();
    }

    #[test]
    fn a_short_read_names_the_field() {
        let mut r = Reader::new("T", &[0x01], 16).unwrap();
        assert_eq!(
            r.u16("size"),
            Err(WireError::Truncated {
                structure: "T",
                field: "size",
                needed: 2,
                available: 1
            })
        );
    }

    #[test]
    fn a_sized_field_above_its_maximum_is_refused_before_reading() {
        let mut r = Reader::new("T", &[0x00, 0x05, 1, 2, 3, 4, 5], 16).unwrap();
        assert!(matches!(
            r.sized("buffer", 4),
            Err(WireError::FieldTooLarge { len: 5, max: 4, .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut r = Reader::new("T", &[0x00, 0x01, 0xaa, 0xbb], 16).unwrap();
        assert_eq!(r.sized("buffer", 4).unwrap(), [0xaa]);
        assert_eq!(
            r.finish(),
            Err(WireError::TrailingBytes {
                structure: "T",
                count: 1
            })
        );
    }

    #[test]
    fn an_oversized_structure_is_refused_whole() {
        assert!(matches!(
            Reader::new("T", &[0; 17], 16),
            Err(WireError::TooLarge {
                len: 17,
                max: 16,
                ..
            })
        ));
    }
}
