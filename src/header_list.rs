//! Header fields the gateway adds to a response (rate-limit state, `retry-after`, the
//! experiment variant, the trace context, CORS), every value written into one buffer: a
//! request with seven of them pays for one growing buffer, not a `String` per value.

use smallvec::SmallVec;
use std::fmt::{self, Write as _};

/// Room for the usual fields (six rate-limit headers and the variant) without a heap list.
const INLINE: usize = 8;

/// What a request's fields usually take, reserved at the first push so they are written
/// without regrowing.
const FIRST_RESERVE: usize = 160;

#[derive(Debug, Clone, Default)]
pub struct HeaderList {
    values: String,
    /// Name and where its value lies in `values`, in the order pushed.
    fields: SmallVec<[(&'static str, u32, u32); INLINE]>,
}

impl HeaderList {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Adds a field; a name may repeat (each is sent, in order).
    pub fn push(&mut self, name: &'static str, value: &str) {
        self.push_with(name, |s| s.push_str(value));
    }

    /// Adds a field with an integer value, written without the formatting machinery.
    pub fn push_int(&mut self, name: &'static str, n: impl itoa::Integer) {
        self.push_with(name, |s| s.push_str(itoa::Buffer::new().format(n)));
    }

    /// Adds a field whose value is `format_args!(..)`.
    pub fn push_fmt(&mut self, name: &'static str, value: fmt::Arguments<'_>) {
        // Writing into a `String` cannot fail.
        self.push_with(name, |s| {
            let _ = s.write_fmt(value);
        });
    }

    /// Adds a field whose value `write` appends to the buffer it is given.
    pub fn push_with(&mut self, name: &'static str, write: impl FnOnce(&mut String)) {
        if self.values.capacity() == 0 {
            self.values.reserve(FIRST_RESERVE);
        }
        let start = self.values.len();
        write(&mut self.values);
        // Offsets fit in u32: header values are bounded far below 4 GiB (the client's head and
        // config values); saturate rather than wrap if that ever stopped holding.
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.fields.push((name, at(start), at(self.values.len())));
    }

    /// Every field in order: name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.fields
            .iter()
            .map(|&(n, a, b)| (n, self.values.get(a as usize..b as usize).unwrap_or("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_order_names_and_values_however_they_were_written() {
        let mut h = HeaderList::default();
        assert!(h.is_empty());
        h.push("x-a", "one");
        h.push_int("x-b", 0u64);
        h.push_int("x-b", u64::MAX);
        h.push_fmt("x-c", format_args!("{}m{}s", 6, 0));
        h.push("x-empty", "");
        h.push_with("x-d", |s| s.push_str("tail"));
        let got: Vec<_> = h.iter().collect();
        assert_eq!(
            got,
            [
                ("x-a", "one"),
                ("x-b", "0"),
                ("x-b", "18446744073709551615"),
                ("x-c", "6m0s"),
                ("x-empty", ""),
                ("x-d", "tail"),
            ]
        );
        assert_eq!(h.len(), 6);
    }

    #[test]
    fn more_fields_than_fit_inline_are_all_kept() {
        let mut h = HeaderList::default();
        for i in 0..(INLINE as u32 * 3) {
            h.push_int("x-n", i);
        }
        let values: Vec<_> = h.iter().map(|(_, v)| v.to_string()).collect();
        let want: Vec<_> = (0..INLINE * 3).map(|i| i.to_string()).collect();
        assert_eq!(values, want);
    }
}
