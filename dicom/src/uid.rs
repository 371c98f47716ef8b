//! New DICOM UIDs: `2.25.<a random (version 4) UUID as one decimal integer>`, the form
//! DICOM PS3.5 B.2 defines for UIDs derived from a UUID; no organisation root needed.

/// A fresh UID, at most 44 characters (2.25. and up to 39 digits).
pub fn new_uid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    // RFC 9562 version 4 (random) and variant 10xx.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_and_distinct() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        for uid in [&a, &b] {
            assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
            let number = &uid[5..];
            assert!(number.chars().all(|c| c.is_ascii_digit()) && !number.starts_with('0'), "{uid}");
            // The version nibble of the UUID is 4.
            let value: u128 = number.parse().unwrap();
            assert_eq!((value >> 76) & 0xf, 4);
        }
    }
}
