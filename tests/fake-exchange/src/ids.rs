//! Opaque EWS ids: base64 strings that, like real Exchange ids, contain `+`, `/` and `=`,
//! encode mailbox + folder/item and carry a checksum so the server can tell a malformed id
//! (ErrorInvalidIdMalformed) from a well-formed id of something that no longer exists
//! (ErrorItemNotFound / ErrorFolderNotFound).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::rng::hash64;

/// What an id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Folder = 1,
    Item = 2,
    Attachment = 3,
}

/// Mailbox number used by [`crate::make_item`] ids, which belong to no mailbox yet.
pub const UNASSIGNED_MAILBOX: u16 = 0xFFFF;
/// Folder number of a mailbox's msgfolderroot ("Top of Information Store").
pub const MSGFOLDERROOT: u16 = 0xFFFE;
/// Folder number of a mailbox's non-IPM root.
pub const ROOT: u16 = 0xFFFD;

const PREFIX: [u8; 3] = [0x00, 0x03, 0x24]; // base64 "AAMk", like real item ids
const PLUS_SLASH: [u8; 3] = [0xFB, 0xFF, 0xBF]; // base64 "+/+/"
const LEN: usize = 44; // 44 % 3 == 2: one '=' of padding

/// The fields an id encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedId {
    pub kind: IdKind,
    pub mailbox: u16,
    pub folder: u16,
    pub serial: u64,
}

fn mailbox_guid(mailbox: u16) -> [u8; 16] {
    let a = hash64(&[b'm', b'b', (mailbox >> 8) as u8, mailbox as u8]);
    let b = hash64(&a.to_le_bytes());
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&a.to_be_bytes());
    g[8..].copy_from_slice(&b.to_be_bytes());
    g
}

/// Encode an id. `serial` uses 48 bits.
pub fn encode(kind: IdKind, mailbox: u16, folder: u16, serial: u64) -> String {
    let mut b = Vec::with_capacity(LEN);
    b.extend_from_slice(&PREFIX);
    b.extend_from_slice(&[kind as u8, (mailbox >> 8) as u8, mailbox as u8]);
    b.extend_from_slice(&[0x00, (folder >> 8) as u8, folder as u8]);
    b.extend_from_slice(&serial.to_be_bytes()[2..]);
    b.extend_from_slice(&PLUS_SLASH);
    b.extend_from_slice(&mailbox_guid(mailbox));
    let check = hash64(&b);
    b.extend_from_slice(&check.to_be_bytes());
    b.extend_from_slice(&[0x00, 0x00]);
    debug_assert_eq!(b.len(), LEN);
    STANDARD.encode(&b)
}

/// Decode an id produced by [`encode`]; `None` if it is not one (= malformed).
pub fn decode(id: &str) -> Option<DecodedId> {
    let b = STANDARD.decode(id.trim()).ok()?;
    if b.len() != LEN || b[..3] != PREFIX || b[15..18] != PLUS_SLASH {
        return None;
    }
    let check = u64::from_be_bytes(b[34..42].try_into().ok()?);
    if hash64(&b[..34]) != check {
        return None;
    }
    let kind = match b[3] {
        1 => IdKind::Folder,
        2 => IdKind::Item,
        3 => IdKind::Attachment,
        _ => return None,
    };
    let mailbox = u16::from_be_bytes([b[4], b[5]]);
    let folder = u16::from_be_bytes([b[7], b[8]]);
    let mut serial = [0u8; 8];
    serial[2..].copy_from_slice(&b[9..15]);
    Some(DecodedId {
        kind,
        mailbox,
        folder,
        serial: u64::from_be_bytes(serial),
    })
}

/// A ChangeKey in Exchange's shape (`CQAAABYAAAA...` for items, `AQAAABYAAAA...` for folders).
pub fn change_key(kind: IdKind, mailbox: u16, serial: u64, version: u32) -> String {
    let mut b = Vec::with_capacity(30);
    b.push(if kind == IdKind::Folder { 0x01 } else { 0x09 });
    b.extend_from_slice(&[0, 0, 0, 0x16, 0, 0, 0]);
    b.extend_from_slice(&mailbox_guid(mailbox));
    b.extend_from_slice(&(serial as u32 ^ 0x00A5_0000).to_be_bytes());
    b.extend_from_slice(&version.to_be_bytes()[2..]);
    STANDARD.encode(&b)
}

/// A conversation id (`AAQkA...`) derived from a topic key.
pub fn conversation_id(key: u64) -> String {
    let mut b = vec![0x00, 0x04, 0x24, 0x00];
    b.extend_from_slice(&key.to_be_bytes());
    b.extend_from_slice(&hash64(&key.to_le_bytes()).to_be_bytes());
    b.extend_from_slice(&[0x10, 0x00, 0xFB, 0xEF, 0xBE]);
    STANDARD.encode(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shape() {
        for serial in [0u64, 1, 77, 0xFFFF_FFFF_FFFF] {
            let id = encode(IdKind::Item, 3, 12, serial);
            assert!(
                id.contains('+') && id.contains('/') && id.ends_with('='),
                "{id}"
            );
            assert!(id.starts_with("AAMk"));
            let d = decode(&id).unwrap();
            assert_eq!(
                d,
                DecodedId {
                    kind: IdKind::Item,
                    mailbox: 3,
                    folder: 12,
                    serial
                }
            );
        }
        let id = encode(IdKind::Folder, 0, MSGFOLDERROOT, 0);
        assert_eq!(decode(&id).unwrap().folder, MSGFOLDERROOT);
    }

    #[test]
    fn rejects_malformed() {
        assert!(decode("not base64!").is_none());
        assert!(decode("AAMkAGItem1=").is_none());
        let id = encode(IdKind::Item, 1, 2, 3);
        let mut bytes = STANDARD.decode(&id).unwrap();
        bytes[10] ^= 1;
        assert!(decode(&STANDARD.encode(&bytes)).is_none());
        let ck = change_key(IdKind::Item, 1, 5, 1);
        assert!(ck.starts_with("CQAAABYAAAA"), "{ck}");
        assert_eq!(ck.len(), 40);
    }
}
