//! The one little-endian reader: a cursor over a file's bytes whose every read is
//! bounds-checked and names the file and the byte offset when the data runs out.

use crate::error::{Error, Result};

/// Reads little-endian values from `bytes`, front to back.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    file: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`, which come from `file` (named in errors).
    pub fn new(file: &'a str, bytes: &'a [u8]) -> Self {
        Self {
            file,
            bytes,
            pos: 0,
        }
    }

    /// The offset of the next byte to read.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// A [`Error::Corrupt`] about `file` at the current offset.
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::corrupt(self.file, format!("at byte {}: {message}", self.pos))
    }

    /// The next `n` bytes; an error naming `what` if fewer are left.
    pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error(format_args!(
                "{what} needs {n} bytes, {} are left",
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    /// A `u32`.
    pub fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// A `u64`.
    pub fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// An `f32`.
    pub fn f32(&mut self, what: &str) -> Result<f32> {
        self.array(what).map(f32::from_le_bytes)
    }

    /// A `u64` count that must be at most `max` (bounding what a caller allocates for it).
    pub fn count(&mut self, what: &str, max: u64) -> Result<usize> {
        let n = self.u64(what)?;
        if n > max {
            return Err(self.error(format_args!("{what} is {n}, at most {max} fit")));
        }
        usize::try_from(n).map_err(|_| self.error(format_args!("{what} {n} overflows usize")))
    }

    /// An error unless every byte was read.
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.error(format_args!(
                "{} unexpected trailing bytes",
                self.remaining()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_in_order_and_names_the_offset_when_short() {
        let mut b = Vec::new();
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&9u64.to_le_bytes());
        b.extend_from_slice(&1.5f32.to_le_bytes());
        let mut r = Reader::new("f", &b);
        assert_eq!(r.u32("a").unwrap(), 7);
        assert_eq!(r.u64("b").unwrap(), 9);
        assert_eq!(r.f32("c").unwrap(), 1.5);
        r.finish().unwrap();
        let err = r.u32("d").unwrap_err().to_string();
        assert!(
            err.contains("at byte 16") && err.contains("d needs 4 bytes"),
            "{err}"
        );
    }

    #[test]
    fn counts_are_bounded_before_anything_is_allocated() {
        let b = u64::MAX.to_le_bytes();
        let err = Reader::new("f", &b).count("rows", 1 << 20).unwrap_err();
        assert!(
            err.to_string().contains("rows is 18446744073709551615"),
            "{err}"
        );
        let mut r = Reader::new("f", &[1, 2]);
        r.bytes(1, "x").unwrap();
        assert!(
            r.finish()
                .unwrap_err()
                .to_string()
                .contains("1 unexpected trailing")
        );
    }
}
