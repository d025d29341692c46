//! A minimal pcapng writer (draft-ietf-opsawg-pcapng): one section, one
//! Ethernet interface block per lab interface (named `ns/if`), nanosecond
//! timestamps, and one enhanced packet block per traced hop with the hop,
//! action and NAT rewrite in its comment, as Wireshark shows them.

use std::io::{self, Write};

const SHB: u32 = 0x0a0d_0d0a;
const IDB: u32 = 0x0000_0001;
const EPB: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const LINKTYPE_ETHERNET: u16 = 1;
const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const SHB_USERAPPL: u16 = 4;

pub struct PcapngWriter<W: Write> {
    out: W,
    interfaces: u32,
    packets: u64,
}

impl<W: Write> PcapngWriter<W> {
    /// Writes the section header.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut body = Vec::new();
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        // Section length: unknown.
        body.extend_from_slice(&(-1i64).to_le_bytes());
        option(&mut body, SHB_USERAPPL, b"netlab trace");
        end_options(&mut body);
        block(&mut out, SHB, &body)?;
        Ok(Self {
            out,
            interfaces: 0,
            packets: 0,
        })
    }

    /// Adds an interface and returns its id for [`Self::packet`].
    pub fn interface(&mut self, name: &str, description: &str, snaplen: u32) -> io::Result<u32> {
        let mut body = Vec::new();
        body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&snaplen.to_le_bytes());
        option(&mut body, IF_NAME, name.as_bytes());
        if !description.is_empty() {
            option(&mut body, IF_DESCRIPTION, description.as_bytes());
        }
        // Timestamps in nanoseconds.
        option(&mut body, IF_TSRESOL, &[9]);
        end_options(&mut body);
        block(&mut self.out, IDB, &body)?;
        self.interfaces += 1;
        Ok(self.interfaces - 1)
    }

    /// Adds a packet: `data` as captured, `len` its length on the wire,
    /// `ts_ns` nanoseconds since the epoch.
    pub fn packet(
        &mut self,
        interface: u32,
        ts_ns: u64,
        data: &[u8],
        len: u32,
        comment: &str,
    ) -> io::Result<()> {
        let mut body = Vec::new();
        body.extend_from_slice(&interface.to_le_bytes());
        body.extend_from_slice(&((ts_ns >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts_ns as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&len.max(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        pad(&mut body);
        if !comment.is_empty() {
            option(&mut body, OPT_COMMENT, comment.as_bytes());
        }
        end_options(&mut body);
        block(&mut self.out, EPB, &body)?;
        self.packets += 1;
        Ok(())
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn pad(body: &mut Vec<u8>) {
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
}

fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
    // An option holds at most 65535 bytes.
    let value = &value[..value.len().min(0xfff8)];
    body.extend_from_slice(&code.to_le_bytes());
    body.extend_from_slice(&(value.len() as u16).to_le_bytes());
    body.extend_from_slice(value);
    pad(body);
}

fn end_options(body: &mut Vec<u8>) {
    body.extend_from_slice(&OPT_END.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
}

fn block<W: Write>(out: &mut W, kind: u32, body: &[u8]) -> io::Result<()> {
    let total = (12 + body.len()) as u32;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&total.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    /// Walks the blocks: (type, total length), checking that each block's
    /// trailing length matches its leading one and is a multiple of 4.
    fn blocks(bytes: &[u8]) -> Vec<(u32, usize)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let kind = u32_at(bytes, at);
            let len = u32_at(bytes, at + 4) as usize;
            assert_eq!(len % 4, 0, "block at {at} has length {len}");
            assert_eq!(u32_at(bytes, at + len - 4) as usize, len, "trailer at {at}");
            out.push((kind, len));
            at += len;
        }
        assert_eq!(at, bytes.len());
        out
    }

    #[test]
    fn writes_well_formed_blocks() {
        let mut w = PcapngWriter::new(Vec::new()).unwrap();
        let red = w.interface("red/veth-red", "lab netlab", 256).unwrap();
        let host = w.interface("host/veth-red-br", "", 256).unwrap();
        assert_eq!((red, host), (0, 1));
        w.packet(
            red,
            1_700_000_000_123_456_789,
            &[0xaa; 42],
            98,
            "hop 1: pass",
        )
        .unwrap();
        w.packet(host, 1_700_000_000_123_457_000, &[0xbb; 3], 3, "")
            .unwrap();
        assert_eq!(w.packets(), 2);
        let bytes = w.into_inner();
        let kinds: Vec<u32> = blocks(&bytes).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [SHB, IDB, IDB, EPB, EPB]);
        // Section header: byte-order magic right after the header.
        assert_eq!(u32_at(&bytes, 8), BYTE_ORDER_MAGIC);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("red/veth-red"));
        assert!(text.contains("host/veth-red-br"));
        assert!(text.contains("hop 1: pass"));
    }

    #[test]
    fn packet_fields() {
        let mut w = PcapngWriter::new(Vec::new()).unwrap();
        w.interface("a/b", "", 256).unwrap();
        let start = w.out.len();
        let ts = 0x0000_0001_0000_0002u64;
        w.packet(0, ts, &[1, 2, 3, 4, 5], 60, "hi").unwrap();
        let epb = &w.into_inner()[start..];
        assert_eq!(u32_at(epb, 0), EPB);
        assert_eq!(u32_at(epb, 8), 0, "interface id");
        assert_eq!(u32_at(epb, 12), 1, "timestamp high");
        assert_eq!(u32_at(epb, 16), 2, "timestamp low");
        assert_eq!(u32_at(epb, 20), 5, "captured length");
        assert_eq!(u32_at(epb, 24), 60, "original length");
        assert_eq!(&epb[28..33], &[1, 2, 3, 4, 5]);
        // Data padded to 8 bytes, then the comment option.
        assert_eq!(u16::from_le_bytes([epb[36], epb[37]]), OPT_COMMENT);
        assert_eq!(u16::from_le_bytes([epb[38], epb[39]]), 2);
        assert_eq!(&epb[40..42], b"hi");
        // End of options.
        assert_eq!(&epb[44..48], &[0, 0, 0, 0]);
        assert_eq!(epb.len(), 52);
    }
}
