//! The strict parse: walks the body once without building it, refusing duplicate keys at
//! any depth and measuring what the gate prices.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

pub(super) const DUPLICATE: &str = "duplicate key";

/// Objects with more keys than this check duplicates with a hash set instead of a scan.
pub(super) const LINEAR_KEYS: usize = 16;

/// The keys of one JSON object seen so far. Keys live on a stack shared by the whole parse
/// (an object's keys sit above those of the objects around it) until an object grows past
/// [`LINEAR_KEYS`], when its keys move to a hash set so hostile bodies stay linear.
pub(super) struct Seen<'s, 'de> {
    stack: &'s mut Vec<Cow<'de, str>>,
    base: usize,
    spill: Option<HashSet<Cow<'de, str>>>,
}

impl<'s, 'de> Seen<'s, 'de> {
    fn new(stack: &'s mut Vec<Cow<'de, str>>) -> Self {
        let base = stack.len();
        Self {
            stack,
            base,
            spill: None,
        }
    }

    /// Records `key`; an error when the object already had it.
    fn insert<E: de::Error>(&mut self, key: Cow<'de, str>) -> Result<(), E> {
        let fresh = match &mut self.spill {
            Some(set) => set.insert(key),
            None if self.stack[self.base..].contains(&key) => false,
            None if self.stack.len() - self.base < LINEAR_KEYS => {
                self.stack.push(key);
                true
            }
            None => {
                let mut set: HashSet<_> = self.stack.drain(self.base..).collect();
                set.insert(key);
                self.spill = Some(set);
                true
            }
        };
        if fresh {
            Ok(())
        } else {
            Err(E::custom(DUPLICATE))
        }
    }

    /// The shared stack, for the value of the key just inserted.
    fn stack(&mut self) -> &mut Vec<Cow<'de, str>> {
        self.stack
    }
}

impl Drop for Seen<'_, '_> {
    fn drop(&mut self) {
        self.stack.truncate(self.base);
    }
}

/// An object key, borrowed from the body unless it had escapes.
pub(super) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// What [`Scan`] learned about one value.
pub(super) struct Scanned<'de> {
    /// Its length as compact JSON.
    len: usize,
    /// The string, when the value is one.
    text: Option<Cow<'de, str>>,
}

/// Walks one value without building it: refuses duplicate keys at any depth and measures
/// the value's compact JSON length (what `serde_json::to_vec` of the parsed value gives).
pub(super) struct Scan<'s, 'de> {
    keys: &'s mut Vec<Cow<'de, str>>,
}

/// Length of `s` as a JSON string the way `serde_json` writes it: quoted, with `"` and `\`
/// escaped, control characters as `\n`-style or `\u00XX` escapes, everything else as is.
pub(super) fn quoted_len(s: &str) -> usize {
    2 + s.len()
        + s.bytes()
            .map(|b| match b {
                b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 1,
                0x00..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// Comma-separated members between two brackets.
pub(super) fn bracketed(members: usize, inner: usize) -> usize {
    2 + inner + members.saturating_sub(1)
}

impl<'de> DeserializeSeed<'de> for Scan<'_, 'de> {
    type Value = Scanned<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Scan<'_, 'de> {
    fn scalar(len: usize) -> Scanned<'de> {
        Scanned { len, text: None }
    }
    fn text(text: Cow<'de, str>) -> Scanned<'de> {
        Scanned {
            len: quoted_len(&text),
            text: Some(text),
        }
    }
}

impl<'de> Visitor<'de> for Scan<'_, 'de> {
    type Value = Scanned<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Self::scalar(if v { 4 } else { 5 }))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Self::scalar(itoa::Buffer::new().format(v).len()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Self::scalar(itoa::Buffer::new().format(v).len()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // Parsed numbers are finite, so this is a number, never `null`.
        Ok(Self::scalar(crate::pricing::compact_json_len(
            &Value::from(v),
        )))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Self::text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Self::text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Self::text(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Self::scalar(4))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Self::scalar(4))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (mut n, mut inner) = (0, 0);
        while let Some(item) = seq.next_element_seed(Scan {
            keys: &mut *self.keys,
        })? {
            n += 1;
            inner += item.len;
        }
        Ok(Self::scalar(bracketed(n, inner)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = Seen::new(self.keys);
        let (mut n, mut inner) = (0, 0);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            inner += quoted_len(&key) + 1;
            seen.insert(key)?;
            inner += map.next_value_seed(Scan { keys: seen.stack() })?.len;
            n += 1;
        }
        Ok(Self::scalar(bracketed(n, inner)))
    }
}

/// A JSON value as the gate needs it: an object read into `T`, or only its kind.
pub(super) enum Shape<T> {
    Object(T),
    Array,
    Other,
}

/// The members of one object a reader keeps; every other member is scanned and dropped.
pub(super) trait Fields<'de>: Default {
    /// Reads the value of `key` (already checked for duplicates).
    fn read<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<(), A::Error>;
}

/// Reads an object into `F` strictly; an array is scanned, a scalar only named.
pub(super) struct ObjectSeed<'s, 'de, F> {
    keys: &'s mut Vec<Cow<'de, str>>,
    fields: std::marker::PhantomData<F>,
}

impl<'s, 'de, F> ObjectSeed<'s, 'de, F> {
    pub(super) fn new(keys: &'s mut Vec<Cow<'de, str>>) -> Self {
        Self {
            keys,
            fields: std::marker::PhantomData,
        }
    }
}

impl<'de, F: Fields<'de>> DeserializeSeed<'de> for ObjectSeed<'_, 'de, F> {
    type Value = Shape<F>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: Fields<'de>> Visitor<'de> for ObjectSeed<'_, 'de, F> {
    type Value = Shape<F>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Scan { keys: self.keys }.visit_seq(seq)?;
        Ok(Shape::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = Seen::new(self.keys);
        let mut fields = F::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            // Cloning a borrowed key copies a pointer; only escaped keys were allocated.
            seen.insert(key.clone())?;
            fields.read(&key, &mut map, seen.stack())?;
        }
        Ok(Shape::Object(fields))
    }
}

/// The request object's members the gate reads.
#[derive(Default)]
pub(super) struct Members<'de> {
    pub(super) jsonrpc: Option<Cow<'de, str>>,
    pub(super) method: Option<Cow<'de, str>>,
    pub(super) id: Option<&'de RawValue>,
    pub(super) params: Option<Shape<Params<'de>>>,
}

impl<'de> Fields<'de> for Members<'de> {
    fn read<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<(), A::Error> {
        match key {
            "jsonrpc" => self.jsonrpc = map.next_value_seed(Scan { keys })?.text,
            "method" => self.method = map.next_value_seed(Scan { keys })?.text,
            "id" => self.id = Some(map.next_value()?),
            "params" => self.params = Some(map.next_value_seed(ObjectSeed::new(keys))?),
            _ => {
                map.next_value_seed(Scan { keys })?;
            }
        }
        Ok(())
    }
}

/// What the gate reads from `params`.
#[derive(Default)]
pub(super) struct Params<'de> {
    pub(super) name: Option<Cow<'de, str>>,
    pub(super) uri: Option<Cow<'de, str>>,
    pub(super) arguments: usize,
}

impl<'de> Fields<'de> for Params<'de> {
    fn read<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<(), A::Error> {
        let value = map.next_value_seed(Scan { keys })?;
        match key {
            "name" => self.name = value.text,
            "uri" => self.uri = value.text,
            "arguments" => self.arguments = value.len,
            _ => {}
        }
        Ok(())
    }
}
