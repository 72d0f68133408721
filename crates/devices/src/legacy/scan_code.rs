//! Scan codes sie injects, and the i8042's set-2 → set-1 translation.
//!
//! A PS/2 keyboard sends scan code set 2. When the controller's command byte
//! has the translate bit set (as PC firmware leaves it, and as sie's default
//! command byte does), the controller rewrites each code to set 1 before the
//! guest sees it: make codes map through a table, and a 0xF0 "break" prefix
//! is swallowed and sets bit 7 of the next code. Linux keeps whichever mode it
//! finds (it switches to untranslated "direct" mode only when the translate
//! bit is clear at probe time), so the controller must translate exactly when
//! that bit is set. Only the keys sie injects are in the table.

/// Left Ctrl, Left Alt and Delete pressed, then released in reverse order,
/// in scan code set 2.
pub(crate) const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, // Left Ctrl make
    0x11, // Left Alt make
    0xe0, 0x71, // Delete make (extended)
    0xe0, 0xf0, 0x71, // Delete break
    0xf0, 0x11, // Left Alt break
    0xf0, 0x14, // Left Ctrl break
];

const EXTENDED_PREFIX: u8 = 0xe0;
const BREAK_PREFIX_SET2: u8 = 0xf0;
const BREAK_BIT_SET1: u8 = 0x80;

/// Set-2 make code → set-1 make code, for the keys sie injects.
const SET2_TO_SET1: [(u8, u8); 3] = [
    (0x14, 0x1d), // Left Ctrl
    (0x11, 0x38), // Left Alt
    (0x71, 0x53), // Delete (after 0xE0)
];

/// Translates a set-2 sequence to set 1; `Err(code)` names the first code
/// missing from the table.
pub(crate) fn translate_to_set1(set2: &[u8]) -> Result<Vec<u8>, u8> {
    let mut out = Vec::with_capacity(set2.len());
    let mut releasing = false;
    for &code in set2 {
        match code {
            EXTENDED_PREFIX => out.push(code),
            BREAK_PREFIX_SET2 => releasing = true,
            _ => {
                let (_, set1) = SET2_TO_SET1
                    .iter()
                    .find(|(from, _)| *from == code)
                    .ok_or(code)?;
                out.push(if releasing {
                    set1 | BREAK_BIT_SET1
                } else {
                    *set1
                });
                releasing = false;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_alt_del_translates_to_set1() {
        assert_eq!(
            translate_to_set1(&CTRL_ALT_DEL_SET2).unwrap(),
            [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]
        );
    }

    #[test]
    fn unknown_codes_are_refused() {
        assert_eq!(translate_to_set1(&[0xf0, 0x1c]), Err(0x1c));
    }
}
