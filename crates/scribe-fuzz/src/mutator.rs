//! The mutations the fuzzer applies to corpus entries: bit flips, byte changes, insertions and
//! deletions, interesting integers written over the input, arithmetic on little-endian integers,
//! splices with other corpus entries, dictionary words, multi-byte characters and truncation. A [`Mutator`] is seeded,
//! so a run is reproducible from its seed.

/// Integers that often sit on a decoder's edge: zero, one, sign and width boundaries, and lengths
/// a little larger than any real input.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    12,
    16,
    24,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// Makes variations of inputs. Invariant: no output is longer than `max_len`.
#[derive(Debug)]
pub struct Mutator {
    rng: fastrand::Rng,
    max_len: usize,
}

impl Mutator {
    /// A mutator drawing from a PRNG seeded with `seed`, producing inputs of at most `max_len`
    /// bytes.
    pub fn new(seed: u64, max_len: usize) -> Mutator {
        Mutator {
            rng: fastrand::Rng::with_seed(seed),
            max_len: max_len.max(1),
        }
    }

    /// A random index below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.usize(..n.max(1))
    }

    /// A variation of `input`: one to four stacked mutations. `others` are the other corpus
    /// entries (for splicing) and `dict` the target's dictionary words.
    pub fn mutate(&mut self, input: &[u8], others: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
        let mut out = input.to_vec();
        let rounds = 1 + self.rng.usize(..4);
        for _ in 0..rounds {
            self.mutate_once(&mut out, others, dict);
        }
        out.truncate(self.max_len);
        out
    }

    fn mutate_once(&mut self, b: &mut Vec<u8>, others: &[Vec<u8>], dict: &[&[u8]]) {
        let choice = self.rng.u8(..13);
        match choice {
            // Flip one bit.
            0 if !b.is_empty() => {
                let i = self.below(b.len());
                b[i] ^= 1 << self.rng.u8(..8);
            }
            // Set one byte to a random value.
            1 if !b.is_empty() => {
                let i = self.below(b.len());
                b[i] = self.rng.u8(..);
            }
            // Insert a few random bytes.
            2 => {
                let at = self.rng.usize(..=b.len());
                let n = 1 + self.rng.usize(..8);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.u8(..)).collect();
                b.splice(at..at, bytes);
            }
            // Delete a range.
            3 if !b.is_empty() => {
                let at = self.below(b.len());
                let n = 1 + self.rng.usize(..(b.len() - at).min(16));
                b.drain(at..at + n);
            }
            // Duplicate a range in place.
            4 if !b.is_empty() => {
                let at = self.below(b.len());
                let n = 1 + self.rng.usize(..(b.len() - at).min(32));
                let copy = b[at..at + n].to_vec();
                let to = self.rng.usize(..=b.len());
                b.splice(to..to, copy);
            }
            // Write an interesting integer, 1, 2, 4 or 8 bytes wide, little or big endian.
            5 => {
                let v = INTERESTING[self.below(INTERESTING.len())];
                let width = [1usize, 2, 4, 8][self.below(4)];
                let bytes = if self.rng.bool() {
                    v.to_le_bytes()[..width].to_vec()
                } else {
                    v.to_be_bytes()[8 - width..].to_vec()
                };
                self.overwrite(b, &bytes);
            }
            // Add or subtract a little from a little-endian u32 (lengths, counts).
            6 if b.len() >= 4 => {
                let at = self.below(b.len() - 3);
                let v = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let d = 1 + self.rng.u32(..16);
                let v = if self.rng.bool() {
                    v.wrapping_add(d)
                } else {
                    v.wrapping_sub(d)
                };
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            // Splice: this entry's head with another's tail.
            7 if !others.is_empty() => {
                let other = &others[self.below(others.len())];
                let cut = self.rng.usize(..=b.len());
                let from = self.rng.usize(..=other.len());
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            // Insert a piece of another entry.
            8 if !others.is_empty() => {
                let other = &others[self.below(others.len())];
                if !other.is_empty() {
                    let from = self.below(other.len());
                    let n = 1 + self.rng.usize(..(other.len() - from).min(64));
                    let at = self.rng.usize(..=b.len());
                    b.splice(at..at, other[from..from + n].iter().copied());
                }
            }
            // Insert or write a dictionary word.
            9 if !dict.is_empty() => {
                let word = dict[self.below(dict.len())];
                if self.rng.bool() {
                    let at = self.rng.usize(..=b.len());
                    b.splice(at..at, word.iter().copied());
                } else {
                    self.overwrite(b, word);
                }
            }
            // Insert a character of two, three or four UTF-8 bytes (or a byte that is never
            // UTF-8), for decoders that slice text by byte offsets.
            11 => {
                const WIDE: &[&str] = &["\u{e9}", "\u{20ac}", "\u{1f600}", "\u{0}", "\u{feff}"];
                let at = self.rng.usize(..=b.len());
                if self.rng.u8(..6) == 0 {
                    b.insert(at, 0xff);
                } else {
                    let c = WIDE[self.below(WIDE.len())].as_bytes();
                    b.splice(at..at, c.iter().copied());
                }
            }
            // Truncate.
            10 if !b.is_empty() => {
                let n = self.below(b.len());
                b.truncate(n);
            }
            // Replace a byte with an ASCII character that matters to text formats.
            _ if !b.is_empty() => {
                const PUNCT: &[u8] = b"\0\t\n\r \"$'(),-.:;=?[\\]{}*/+0123456789eE";
                let i = self.below(b.len());
                b[i] = PUNCT[self.below(PUNCT.len())];
            }
            _ => b.push(self.rng.u8(..)),
        }
    }

    /// Writes `bytes` over `b` at a random offset, growing it if they run past its end.
    fn overwrite(&mut self, b: &mut Vec<u8>, bytes: &[u8]) {
        let at = self.rng.usize(..=b.len());
        let end = at + bytes.len();
        if end > b.len() {
            b.resize(end, 0);
        }
        b[at..end].copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_length_limit_and_change_the_input() {
        let mut m = Mutator::new(7, 64);
        let seed = vec![0xAAu8; 48];
        let others = vec![vec![1u8; 100]];
        let mut changed = 0;
        for _ in 0..10_000 {
            let out = m.mutate(&seed, &others, &[b"SELECT"]);
            assert!(out.len() <= 64);
            changed += usize::from(out != seed);
        }
        assert!(
            changed > 9_000,
            "only {changed} of 10000 mutations changed the input"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_mutations() {
        let run = |seed| {
            let mut m = Mutator::new(seed, 1024);
            (0..100)
                .map(|_| m.mutate(b"hello world", &[], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
