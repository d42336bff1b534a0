//! pprof profiles (github.com/google/pprof proto/profile.proto), gzipped as Go writes them, so
//! `go tool pprof` opens what mapscope writes. Only the messages and fields mapscope fills are
//! encoded; a protobuf writer that small is clearer by hand than generated.
use std::{collections::HashMap, io::Write as _};

use flate2::{Compression, write::GzEncoder};

/// One line of a location: a function and line (inlined calls give a location several).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Line {
    /// Shared between the stacks that pass through the same code (`collect::stacks`
    /// interns them: thousands of stacks repeat the same few hundred names).
    pub function: std::sync::Arc<str>,
    pub file: std::sync::Arc<str>,
    pub line: i64,
}

/// A sampled call stack, leaf first: one entry per machine address, each with its lines
/// innermost first.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub stack: Vec<(u64, Vec<Line>)>,
    pub values: Vec<i64>,
}

/// A profile about to be written.
pub struct Profile {
    /// (type, unit) per value, e.g. ("alloc_space", "bytes").
    pub sample_types: Vec<(&'static str, &'static str)>,
    /// Which sample type pprof shows by default.
    pub default_sample_type: &'static str,
    pub period_type: (&'static str, &'static str),
    pub period: i64,
    pub time_nanos: i64,
    pub duration_nanos: i64,
    pub samples: Vec<Sample>,
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut strings = Self::default();
        strings.get(""); // index 0 must be the empty string
        strings
    }

    fn get(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.index.get(text) {
            return index;
        }
        let index = self.table.len() as i64;
        self.table.push(text.to_owned());
        self.index.insert(text.to_owned(), index);
        index
    }
}

/// Protobuf wire format: varints and length-delimited fields.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn uint(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.varint(u64::from(field) << 3);
            self.varint(value);
        }
    }

    fn int(&mut self, field: u32, value: i64) {
        self.uint(field, value as u64);
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn message(&mut self, field: u32, message: Message) {
        self.bytes(field, &message.0);
    }

    /// A packed repeated varint field.
    fn packed(&mut self, field: u32, values: impl IntoIterator<Item = u64>) {
        let mut packed = Message::default();
        for value in values {
            packed.varint(value);
        }
        if !packed.0.is_empty() {
            self.bytes(field, &packed.0);
        }
    }
}

impl Profile {
    /// The encoded, gzipped profile.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let mut strings = Strings::new();
        let mut profile = Message::default();
        let value_type = |strings: &mut Strings, (kind, unit): (&str, &str)| {
            let mut message = Message::default();
            message.int(1, strings.get(kind));
            message.int(2, strings.get(unit));
            message
        };
        for &sample_type in &self.sample_types {
            profile.message(1, value_type(&mut strings, sample_type));
        }

        let mut functions: HashMap<(std::sync::Arc<str>, std::sync::Arc<str>), u64> =
            HashMap::new();
        let mut locations: HashMap<(u64, Vec<Line>), u64> = HashMap::new();
        let mut function_messages = Vec::new();
        let mut location_messages = Vec::new();
        for sample in &self.samples {
            let mut ids = Vec::new();
            for (address, lines) in &sample.stack {
                let key = (*address, lines.clone());
                let id = if let Some(&id) = locations.get(&key) {
                    id
                } else {
                    let id = locations.len() as u64 + 1;
                    let mut location = Message::default();
                    location.uint(1, id);
                    location.uint(2, 1); // the one mapping: the executable
                    location.uint(3, *address);
                    for line in lines {
                        let function_key = (line.function.clone(), line.file.clone());
                        let function_id = match functions.get(&function_key) {
                            Some(&id) => id,
                            None => {
                                let id = functions.len() as u64 + 1;
                                let mut function = Message::default();
                                function.uint(1, id);
                                function.int(2, strings.get(&line.function));
                                function.int(3, strings.get(&line.function));
                                function.int(4, strings.get(&line.file));
                                function_messages.push(function);
                                functions.insert(function_key, id);
                                id
                            }
                        };
                        let mut line_message = Message::default();
                        line_message.uint(1, function_id);
                        line_message.int(2, line.line);
                        location.message(4, line_message);
                    }
                    location_messages.push(location);
                    locations.insert(key, id);
                    id
                };
                ids.push(id);
            }
            let mut message = Message::default();
            message.packed(1, ids);
            message.packed(2, sample.values.iter().map(|&value| value as u64));
            profile.message(2, message);
        }

        let mut mapping = Message::default();
        mapping.uint(1, 1);
        mapping.uint(2, 0);
        mapping.uint(3, u64::MAX);
        mapping.uint(7, 1); // has_functions
        mapping.uint(8, 1); // has_filenames
        mapping.uint(9, 1); // has_line_numbers
        mapping.uint(10, 1); // has_inline_frames
        profile.message(3, mapping);
        for location in location_messages {
            profile.message(4, location);
        }
        for function in function_messages {
            profile.message(5, function);
        }
        profile.int(9, self.time_nanos);
        profile.int(10, self.duration_nanos);
        profile.message(11, value_type(&mut strings, self.period_type));
        profile.int(12, self.period);
        let default = strings.get(self.default_sample_type);
        profile.int(14, default);
        // The string table goes last: every index above has been handed out by now.
        for text in &strings.table {
            profile.bytes(6, text.as_bytes());
        }

        let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
        gzip.write_all(&profile.0)?;
        gzip.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_follow_the_wire_format() {
        let mut message = Message::default();
        message.uint(1, 150);
        assert_eq!(message.0, [0x08, 0x96, 0x01]);
        let mut message = Message::default();
        message.bytes(2, b"hi");
        assert_eq!(message.0, [0x12, 2, b'h', b'i']);
        let mut message = Message::default();
        message.packed(1, [3, 270]);
        assert_eq!(message.0, [0x0a, 3, 3, 0x8e, 0x02]);
        let mut message = Message::default();
        message.uint(5, 0);
        assert!(message.0.is_empty(), "proto3 leaves zero values out");
    }

    #[test]
    fn strings_are_interned_with_empty_first() {
        let mut strings = Strings::new();
        assert_eq!(strings.get("alloc_space"), 1);
        assert_eq!(strings.get(""), 0);
        assert_eq!(strings.get("alloc_space"), 1);
        assert_eq!(strings.table, ["", "alloc_space"]);
    }

    #[test]
    fn encodes_a_gzipped_profile() {
        let line = |function: &str| Line {
            function: function.into(),
            file: "main.go".into(),
            line: 7,
        };
        let profile = Profile {
            sample_types: vec![("alloc_objects", "count"), ("alloc_space", "bytes")],
            default_sample_type: "alloc_space",
            period_type: ("space", "bytes"),
            period: 524_288,
            time_nanos: 1,
            duration_nanos: 2,
            samples: vec![Sample {
                stack: vec![
                    (0x401000, vec![line("main.leaf"), line("main.outer")]),
                    (0x402000, vec![line("main.main")]),
                ],
                values: vec![10, 640],
            }],
        };
        let encoded = profile.encode().unwrap();
        assert_eq!(&encoded[..2], &[0x1f, 0x8b], "gzip magic");
    }
}
