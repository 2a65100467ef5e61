//! A small, panic-free big-endian bit reader for codec parameter sets.
//! It reads fixed-width fields, exp-Golomb codes (ue(v)/se(v), ISO/IEC 14496-10 9.1) and AV1 uvlc(),
//! and every read reports the field name and bit offset on failure; a helper strips emulation prevention bytes.

use super::{MediaError, Pos};

/// Reads bits MSB-first from a byte slice. Every read is bounds-checked and
/// returns `MediaError::Truncated` naming the field instead of panicking.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
    /// What is being parsed, for error messages ("H.264 SPS").
    what: &'static str,
}

impl<'a> BitReader<'a> {
    /// A reader over `data`; `what` names the structure for error messages.
    pub fn new(data: &'a [u8], what: &'static str) -> Self {
        BitReader { data, pos: 0, what }
    }

    /// Current position in bits from the start.
    pub fn bit_pos(&self) -> usize {
        self.pos
    }

    /// Number of unread bits.
    pub fn remaining_bits(&self) -> usize {
        self.data.len().saturating_mul(8).saturating_sub(self.pos)
    }

    /// What this reader parses, as given to [`BitReader::new`].
    pub fn what(&self) -> &'static str {
        self.what
    }

    fn truncated(&self, field: &'static str) -> MediaError {
        MediaError::Truncated {
            what: self.what,
            field,
            at: Pos::Bit(self.pos),
        }
    }

    /// An `Invalid` error for `field` at the current position.
    pub fn invalid(&self, field: &'static str, value: u64, reason: &'static str) -> MediaError {
        MediaError::Invalid {
            what: self.what,
            field,
            value,
            at: Pos::Bit(self.pos),
            reason,
        }
    }

    /// Reads one bit.
    pub fn read_bit(&mut self, field: &'static str) -> Result<bool, MediaError> {
        let byte = self
            .data
            .get(self.pos / 8)
            .copied()
            .ok_or_else(|| self.truncated(field))?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    /// Reads `n` bits (0..=32) as an unsigned big-endian value.
    pub fn read_bits(&mut self, n: u32, field: &'static str) -> Result<u32, MediaError> {
        if n > 32 {
            return Err(self.invalid(
                field,
                u64::from(n),
                "bit reader reads at most 32 bits at once",
            ));
        }
        if (n as usize) > self.remaining_bits() {
            return Err(self.truncated(field));
        }
        let mut v: u64 = 0;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.read_bit(field)?);
        }
        // n <= 32, so v < 2^32.
        u32::try_from(v).map_err(|_| self.invalid(field, v, "value wider than 32 bits"))
    }

    /// Reads 8 bits.
    pub fn read_u8(&mut self, field: &'static str) -> Result<u8, MediaError> {
        let v = self.read_bits(8, field)?;
        u8::try_from(v).map_err(|_| self.invalid(field, u64::from(v), "value wider than 8 bits"))
    }

    /// Skips `n` bits.
    pub fn skip_bits(&mut self, n: usize, field: &'static str) -> Result<(), MediaError> {
        if n > self.remaining_bits() {
            return Err(self.truncated(field));
        }
        self.pos += n;
        Ok(())
    }

    /// ue(v): unsigned exp-Golomb (ISO/IEC 14496-10 9.1, ISO/IEC 23008-2 9.2).
    /// Codes longer than 32 bits of prefix cannot hold a valid 32-bit value
    /// and are rejected rather than read.
    pub fn read_ue(&mut self, field: &'static str) -> Result<u32, MediaError> {
        let start = self.pos;
        let mut leading_zeros: u32 = 0;
        while !self.read_bit(field)? {
            leading_zeros += 1;
            if leading_zeros > 31 {
                return Err(MediaError::Invalid {
                    what: self.what,
                    field,
                    value: u64::from(leading_zeros),
                    at: Pos::Bit(start),
                    reason: "exp-Golomb code longer than 32 bits",
                });
            }
        }
        let suffix = self.read_bits(leading_zeros, field)?;
        // leading_zeros <= 31: (2^31 - 1) + (2^31 - 1) = 2^32 - 2 fits u32.
        let v = ((1u64 << leading_zeros) - 1) + u64::from(suffix);
        u32::try_from(v).map_err(|_| self.invalid(field, v, "exp-Golomb value exceeds 32 bits"))
    }

    /// se(v): signed exp-Golomb, mapped from ue(v) as k -> (-1)^(k+1) * ceil(k/2).
    pub fn read_se(&mut self, field: &'static str) -> Result<i32, MediaError> {
        let k = i64::from(self.read_ue(field)?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        i32::try_from(v)
            .map_err(|_| self.invalid(field, k as u64, "signed exp-Golomb out of range"))
    }

    /// uvlc() from the AV1 specification 4.10.3: like ue(v), but a prefix of
    /// 32 or more zeros yields 2^32 - 1 without reading a suffix.
    pub fn read_uvlc(&mut self, field: &'static str) -> Result<u32, MediaError> {
        let mut leading_zeros: u32 = 0;
        while !self.read_bit(field)? {
            leading_zeros = leading_zeros.saturating_add(1);
        }
        if leading_zeros >= 32 {
            return Ok(u32::MAX);
        }
        let suffix = self.read_bits(leading_zeros, field)?;
        let v = ((1u64 << leading_zeros) - 1) + u64::from(suffix);
        u32::try_from(v).map_err(|_| self.invalid(field, v, "uvlc value exceeds 32 bits"))
    }
}

/// Converts a NAL unit payload to its RBSP by removing emulation prevention
/// bytes: every 0x03 that follows two zero bytes (ISO/IEC 14496-10 7.4.1,
/// ISO/IEC 23008-2 7.4.2). The output is never longer than the input.
pub fn remove_emulation_prevention(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0usize;
    for &b in nal {
        if zeros >= 2 && b == 0x03 {
            zeros = 0;
            continue;
        }
        if b == 0 {
            zeros += 1;
        } else {
            zeros = 0;
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fixed_width_fields_msb_first() {
        let mut r = BitReader::new(&[0b1010_1100, 0xFF], "test");
        assert!(r.read_bit("a").unwrap());
        assert_eq!(r.read_bits(3, "b").unwrap(), 0b010);
        assert_eq!(r.read_bits(8, "c").unwrap(), 0b1100_1111);
        assert_eq!(r.remaining_bits(), 4);
        assert!(r.read_bits(5, "d").is_err());
        assert_eq!(r.read_bits(4, "d").unwrap(), 0xF);
        assert!(r.read_bit("e").is_err());
    }

    #[test]
    fn reads_exp_golomb_codes() {
        // 1 | 010 | 011 | 00100 | 00101 -> ue 0,1,2,3,4
        // packed: 1010 0110 0100 0010 1000 0000
        let data = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = BitReader::new(&data, "test");
        for want in 0..5 {
            assert_eq!(r.read_ue("x").unwrap(), want);
        }
        // se mapping: 0,1,-1,2,-2
        let mut r = BitReader::new(&data, "test");
        for want in [0, 1, -1, 2, -2] {
            assert_eq!(r.read_se("x").unwrap(), want);
        }
    }

    #[test]
    fn rejects_overlong_exp_golomb_without_panicking() {
        let data = [0u8; 8];
        let mut r = BitReader::new(&data, "test");
        let err = r.read_ue("x").unwrap_err();
        assert!(err.to_string().contains("longer than 32 bits"), "{err}");
        // Largest representable value: 31 zeros, 1, 31 ones = 2^32 - 2.
        let data = [0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFE];
        let mut r = BitReader::new(&data, "test");
        assert_eq!(r.read_ue("x").unwrap(), u32::MAX - 1);
        let mut r = BitReader::new(&data, "test");
        assert_eq!(r.read_se("x").unwrap(), -(i32::MAX));
    }

    #[test]
    fn uvlc_saturates_long_prefixes() {
        let data = [0, 0, 0, 0, 0x80];
        let mut r = BitReader::new(&data, "test");
        assert_eq!(r.read_uvlc("x").unwrap(), u32::MAX);
    }

    #[test]
    fn removes_emulation_prevention_bytes() {
        assert_eq!(
            remove_emulation_prevention(&[0, 0, 3, 1, 0, 0, 3, 0, 0, 3]),
            vec![0, 0, 1, 0, 0, 0, 0]
        );
        // A 0x03 after a single zero is data.
        assert_eq!(remove_emulation_prevention(&[0, 3, 0, 0]), vec![0, 3, 0, 0]);
        // 00 00 03 03: only the first 03 is emulation prevention.
        assert_eq!(remove_emulation_prevention(&[0, 0, 3, 3]), vec![0, 0, 3]);
    }
}
