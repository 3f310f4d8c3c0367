//! The one framed-file format: every binary file Mosaic writes is a frame, so a file
//! of the wrong kind, of an unknown version, cut short or damaged is refused with the
//! file's name and what was wrong.
//!
//! Layout (little-endian): magic (8 bytes), format version (u32), zero (u32), body
//! length (u64), the body, crc32 of everything before it (u32).

use std::ops::RangeInclusive;

use crate::error::{Error, Result};
use crate::le::Reader;

/// Bytes before the body.
pub const HEADER_LEN: usize = 24;
/// Bytes after the body.
pub const TRAILER_LEN: usize = 4;

/// `body` framed with `magic` and `version`.
pub fn encode(magic: &[u8; 8], version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The version and body of the frame `bytes` (the whole content of `file`), checked:
/// magic, a version in `versions`, the length, the checksum.
pub fn decode<'a>(
    file: &str,
    bytes: &'a [u8],
    magic: &[u8; 8],
    versions: RangeInclusive<u32>,
) -> Result<(u32, &'a [u8])> {
    let mut r = Reader::new(file, bytes);
    let found: [u8; 8] = r.array("magic")?;
    if &found != magic {
        return Err(Error::corrupt(
            file,
            format!(
                "magic {:?}, expected {:?}",
                String::from_utf8_lossy(&found),
                String::from_utf8_lossy(magic)
            ),
        ));
    }
    let version = r.u32("version")?;
    if !versions.contains(&version) {
        return Err(Error::corrupt(
            file,
            format!(
                "format version {version}, this build reads {} to {}",
                versions.start(),
                versions.end()
            ),
        ));
    }
    if r.u32("reserved")? != 0 {
        return Err(r.error("reserved header bytes are not zero"));
    }
    let len = r.u64("body length")?;
    let expected = (bytes.len() - HEADER_LEN).saturating_sub(TRAILER_LEN) as u64;
    if bytes.len() < HEADER_LEN + TRAILER_LEN || len != expected {
        return Err(Error::corrupt(
            file,
            format!(
                "body length {len}, but the file holds {} bytes (cut short or extended)",
                bytes.len()
            ),
        ));
    }
    let end = bytes.len() - TRAILER_LEN;
    let mut crc = Reader::new(file, &bytes[end..]);
    if crc32fast::hash(&bytes[..end]) != crc.u32("checksum")? {
        return Err(Error::corrupt(file, "checksum mismatch"));
    }
    Ok((version, &bytes[HEADER_LEN..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_every_flipped_byte_is_refused() {
        let framed = encode(b"MOSTEST1", 3, b"hello body");
        assert_eq!(
            decode("f", &framed, b"MOSTEST1", 1..=3).unwrap(),
            (3, &b"hello body"[..])
        );
        for i in 0..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0x40;
            assert!(decode("f", &bad, b"MOSTEST1", 1..=3).is_err(), "byte {i}");
        }
        for cut in 0..framed.len() {
            assert!(
                decode("f", &framed[..cut], b"MOSTEST1", 1..=3).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let framed = encode(b"MOSTEST1", 4, b"");
        let e = decode("meta", &framed, b"MOSTEST1", 1..=3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("meta") && e.contains("format version 4"), "{e}");
        let e = decode("meta", &framed, b"MOSOTHER", 1..=4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic"), "{e}");
    }
}
