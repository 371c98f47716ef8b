//! Vertebral levels and their label values in a vertebra label map.
//!
//! Label values follow VerSe (the public spine CT dataset): C1..C7 = 1..7, T1..T12 = 8..19,
//! L1..L6 = 20..25. The phantom writes the same values, so one reader serves both.

use std::fmt;
use std::str::FromStr;

/// One vertebra, e.g. `T12` or `L1`. Ordered cranial to caudal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(u8);

impl Level {
    /// The level with this VerSe label value (1..=25).
    pub fn from_label(label: u8) -> Option<Level> {
        (1..=25).contains(&label).then_some(Level(label))
    }

    pub fn label(self) -> u8 {
        self.0
    }

    /// Levels from `first` to `last` inclusive, cranial to caudal.
    pub fn range(first: Level, last: Level) -> impl Iterator<Item = Level> {
        (first.0..=last.0).map(Level)
    }

    /// The levels the method works on: T4 to L5.
    pub fn method_range() -> impl Iterator<Item = Level> {
        Level::range("T4".parse().expect("valid"), "L5".parse().expect("valid"))
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n @ 1..=7 => write!(f, "C{n}"),
            n @ 8..=19 => write!(f, "T{}", n - 7),
            n => write!(f, "L{}", n - 19),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown vertebral level {0:?}: expected C1..C7, T1..T12 or L1..L6")]
pub struct UnknownLevel(pub String);

impl FromStr for Level {
    type Err = UnknownLevel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnknownLevel(s.to_string());
        let (region, number) = s.split_at_checked(1).ok_or_else(err)?;
        let n: u8 = number.parse().map_err(|_| err())?;
        let label = match (region, n) {
            ("C", 1..=7) => n,
            ("T", 1..=12) => n + 7,
            ("L", 1..=6) => n + 19,
            _ => return Err(err()),
        };
        Ok(Level(label))
    }
}

impl serde::Serialize for Level {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_verse_labels_agree() {
        let t4: Level = "T4".parse().unwrap();
        let l5: Level = "L5".parse().unwrap();
        assert_eq!((t4.label(), l5.label()), (11, 24));
        assert_eq!(Level::from_label(19).unwrap().to_string(), "T12");
        assert_eq!(Level::from_label(20).unwrap().to_string(), "L1");
        assert_eq!(Level::method_range().count(), 14);
        for label in 1..=25 {
            let level = Level::from_label(label).unwrap();
            assert_eq!(level.to_string().parse::<Level>().unwrap(), level);
        }
    }

    #[test]
    fn unknown_levels_are_errors() {
        for bad in ["", "T", "T13", "L7", "C0", "X3", "t4"] {
            assert_eq!(bad.parse::<Level>(), Err(UnknownLevel(bad.to_string())), "{bad}");
        }
        assert_eq!(Level::from_label(26), None);
    }
}
