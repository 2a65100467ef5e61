//! Program-specific information: the CRC32/MPEG-2 that protects every section and builders for
//! the one-packet PAT (ISO/IEC 13818-1 2.4.4.3) and PMT (2.4.4.8) the muxer writes.
//! Packets are built once per configuration change; the muxer only patches the continuity counter.

use super::{PACKET, PID_PAT, PID_PMT, PROGRAM_NUMBER, SYNC_BYTE};

/// CRC-32/MPEG-2 (Annex A): polynomial 0x04C11DB7, initial value all ones,
/// MSB first, no final XOR. Running it over a section including its
/// CRC_32 field yields 0, which is how decoders check it.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    data.iter().fold(0xFFFF_FFFF, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// One elementary stream entry of the PMT's loop (2.4.4.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PmtEntry {
    pub stream_type: u8,
    pub pid: u16,
}

/// The most entries [`pmt_packet`] writes; sluice has one video and one audio.
pub(crate) const MAX_PMT_ENTRIES: usize = 2;

/// A section under construction: a fixed buffer, so building one never allocates.
struct Section {
    buf: [u8; PACKET],
    len: usize,
}

impl Section {
    fn new() -> Self {
        Section {
            buf: [0; PACKET],
            len: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        // Sections built here are at most 36 bytes; the bound is for safety.
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    fn put_u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    /// Fills in section_length (bytes after the field, CRC included) and
    /// appends the CRC_32 (2.4.4.3 / 2.4.4.8).
    fn finish(&mut self) -> &[u8] {
        let section_length = (self.len + 4 - 3) as u16;
        self.buf[1] = (self.buf[1] & 0xF0) | ((section_length >> 8) as u8 & 0x0F);
        self.buf[2] = section_length as u8;
        let crc = crc32(&self.buf[..self.len]);
        self.put(&crc.to_be_bytes());
        &self.buf[..self.len]
    }
}

/// One TS packet carrying a whole section: payload_unit_start_indicator set,
/// pointer_field 0, then 0xFF stuffing after the section (2.4.4.1). The
/// continuity counter is left 0 for the muxer to patch.
fn section_packet(pid: u16, section: &[u8]) -> [u8; PACKET] {
    let mut p = [0xFF; PACKET];
    p[0] = SYNC_BYTE;
    p[1] = 0x40 | ((pid >> 8) as u8 & 0x1F);
    p[2] = pid as u8;
    p[3] = 0x10; // no adaptation field, payload only
    p[4] = 0; // pointer_field
    let n = section.len().min(PACKET - 5);
    p[5..5 + n].copy_from_slice(&section[..n]);
    p
}

/// The program association section (2.4.4.3): one program, number 1, with its PMT on 0x1000.
pub(crate) fn pat_section() -> ([u8; PACKET], usize) {
    let mut s = Section::new();
    // table_id 0; section_syntax_indicator 1, '0', reserved '11'; length patched later.
    s.put(&[0x00, 0xB0, 0x00]);
    s.put_u16(1); // transport_stream_id
    s.put(&[0xC1, 0x00, 0x00]); // reserved '11', version 0, current_next 1; section 0 of 0
    s.put_u16(PROGRAM_NUMBER);
    s.put_u16(0xE000 | PID_PMT);
    let len = s.finish().len();
    (s.buf, len)
}

/// The PAT as one TS packet on PID 0.
pub(crate) fn pat_packet() -> [u8; PACKET] {
    let (buf, len) = pat_section();
    section_packet(PID_PAT, &buf[..len])
}

/// The program map section (2.4.4.8) for program 1: `version` (5 bits), the
/// PCR PID (0x1FFF when there is none) and up to [`MAX_PMT_ENTRIES`] streams,
/// with no descriptors.
pub(crate) fn pmt_packet(version: u8, pcr_pid: u16, entries: &[PmtEntry]) -> [u8; PACKET] {
    let mut s = Section::new();
    s.put(&[0x02, 0xB0, 0x00]);
    s.put_u16(PROGRAM_NUMBER);
    s.put(&[0xC1 | ((version & 0x1F) << 1), 0x00, 0x00]);
    s.put_u16(0xE000 | (pcr_pid & 0x1FFF));
    s.put_u16(0xF000); // reserved '1111', program_info_length 0
    for e in entries.iter().take(MAX_PMT_ENTRIES) {
        s.put(&[e.stream_type]);
        s.put_u16(0xE000 | (e.pid & 0x1FFF));
        s.put_u16(0xF000); // ES_info_length 0
    }
    let section = s.finish();
    section_packet(PID_PMT, section)
}

/// The table body (after the 8-byte long header, before the CRC) of a
/// complete section with this table_id that is current and intact.
pub(crate) fn section_body(s: &[u8], table_id: u8) -> Option<&[u8]> {
    let ok =
        s.len() >= 12 && s[0] == table_id && s[1] & 0x80 != 0 && s[5] & 0x01 != 0 && crc32(s) == 0;
    ok.then(|| s.get(8..s.len() - 4)).flatten()
}

/// The (program_number, PMT PID) entries of a PAT body (2.4.4.3), without
/// program 0 (the network PID) and PMT PIDs that cannot be one.
pub(crate) fn pat_programs(body: &[u8]) -> impl Iterator<Item = (u16, u16)> + '_ {
    body.chunks_exact(4).filter_map(|e| {
        let number = u16::from_be_bytes([e[0], e[1]]);
        let pid = u16::from_be_bytes([e[2], e[3]]) & 0x1FFF;
        (number != 0 && pid != PID_PAT && pid != super::PID_NULL).then_some((number, pid))
    })
}

/// What a PMT body (2.4.4.8) lists: the PCR PID and each elementary
/// stream's (stream_type, PID), in order; `None` when an entry runs past
/// the end.
pub(crate) fn pmt_entries(body: &[u8]) -> Option<(u16, Vec<PmtEntry>)> {
    let &[pcr_hi, pcr_lo, pi_hi, pi_lo] = body.get(..4)? else {
        return None;
    };
    let program_info_length = usize::from(u16::from_be_bytes([pi_hi, pi_lo]) & 0x0FFF);
    let mut rest = body.get(4 + program_info_length..)?;
    let mut entries = Vec::new();
    while let Some(&[stream_type, p_hi, p_lo, i_hi, i_lo]) = rest.get(..5) {
        let es_info_length = usize::from(u16::from_be_bytes([i_hi, i_lo]) & 0x0FFF);
        rest = rest.get(5 + es_info_length..)?;
        entries.push(PmtEntry {
            stream_type,
            pid: u16::from_be_bytes([p_hi, p_lo]) & 0x1FFF,
        });
    }
    Some((u16::from_be_bytes([pcr_hi, pcr_lo]) & 0x1FFF, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_mpeg2_check_value() {
        // The catalogued check value of CRC-32/MPEG-2 over "123456789".
        assert_eq!(crc32(b"123456789"), 0x0376_E6E7);
    }

    #[test]
    fn pat_matches_a_known_good_section() {
        // The PAT FFmpeg writes for one program (1 -> PMT 0x1000), CRC included.
        let (buf, len) = pat_section();
        assert_eq!(
            &buf[..len],
            &[
                0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0x2A, 0xB1,
                0x04, 0xB2
            ]
        );
        // A section with its CRC appended checks to zero.
        assert_eq!(crc32(&buf[..len]), 0);
        let p = pat_packet();
        assert_eq!(&p[..5], &[0x47, 0x40, 0x00, 0x10, 0x00]);
        assert!(p[5 + len..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn built_tables_parse_back() {
        let p = pat_packet();
        let body = section_body(&p[5..5 + 16], 0x00).unwrap();
        assert_eq!(pat_programs(body).collect::<Vec<_>>(), vec![(1, PID_PMT)]);
        let entries = [
            PmtEntry {
                stream_type: 0x1B,
                pid: 0x100,
            },
            PmtEntry {
                stream_type: 0x0F,
                pid: 0x101,
            },
        ];
        let p = pmt_packet(0, 0x100, &entries);
        let body = section_body(&p[5..5 + 3 + 23], 0x02).unwrap();
        assert_eq!(pmt_entries(body), Some((0x100, entries.to_vec())));
        // A damaged section is not parsed.
        let mut q = p;
        q[20] ^= 1;
        assert_eq!(section_body(&q[5..5 + 3 + 23], 0x02), None);
    }

    #[test]
    fn pmt_lists_streams_and_version() {
        let p = pmt_packet(
            3,
            0x100,
            &[
                PmtEntry {
                    stream_type: 0x1B,
                    pid: 0x100,
                },
                PmtEntry {
                    stream_type: 0x0F,
                    pid: 0x101,
                },
            ],
        );
        assert_eq!(&p[..4], &[0x47, 0x50, 0x00, 0x10]);
        let section = &p[5..5 + 3 + 23];
        assert_eq!(section[0], 0x02);
        assert_eq!(usize::from(section[2]), 23);
        assert_eq!((section[5] >> 1) & 0x1F, 3);
        assert_eq!(&section[8..10], &[0xE1, 0x00]);
        assert_eq!(&section[12..17], &[0x1B, 0xE1, 0x00, 0xF0, 0x00]);
        assert_eq!(&section[17..22], &[0x0F, 0xE1, 0x01, 0xF0, 0x00]);
        assert_eq!(crc32(section), 0);
    }
}
