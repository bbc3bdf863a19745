//! Sealing under a 32-byte key with ChaCha20-Poly1305: a fresh random 12-byte nonce, then the
//! ciphertext and its tag. One way for everything shoal keeps sealed at rest: Raft records
//! under the data key, and under autolock the data key and the node's TLS key under the
//! unlock key.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Length of the nonce that starts a sealed text.
const NONCE: usize = 12;

/// A key to seal and open with (the cipher set up once).
#[derive(Clone)]
pub struct SealKey(ChaCha20Poly1305);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(redacted)")
    }
}

impl SealKey {
    /// The cipher for `key`.
    pub fn new(key: &[u8; 32]) -> SealKey {
        SealKey(ChaCha20Poly1305::new(Key::from_slice(key)))
    }

    /// `plain` sealed: nonce, then ciphertext and tag.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE] = rand::random();
        let sealed = self
            .0
            .encrypt(Nonce::from_slice(&nonce), plain)
            .expect("ChaCha20-Poly1305 seals any length shoal keeps");
        [&nonce[..], &sealed].concat()
    }

    /// What [`SealKey::seal`] sealed; `None` when it does not open under this key.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE);
        self.0.decrypt(Nonce::from_slice(nonce), body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_sealed_opens_under_its_key_only() {
        let key = SealKey::new(&[1; 32]);
        let sealed = key.seal(b"secret");
        assert_ne!(&sealed[NONCE..], b"secret");
        assert_eq!(key.open(&sealed).as_deref(), Some(&b"secret"[..]));
        assert_eq!(SealKey::new(&[2; 32]).open(&sealed), None);
        assert_eq!(key.open(&sealed[..5]), None);
    }
}
