//! Mapping key paths to positions in the source, through toml's span-preserving parse tree.
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, col)
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(n) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(n));
            }
        }
    }
    out
}

/// The position of the deepest part of `path` that the file has: the value itself when the
/// file has the whole path and it is a plain value (`upstream = "nope"` points at `"nope"`),
/// else the key or table header of the deepest part found.
pub fn position_of(src: &str, path: &str) -> Option<(usize, usize)> {
    let root = DeTable::parse(src).ok()?;
    let mut best = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    let mut whole = true;
    for seg in segments(path) {
        match seg {
            Seg::Key(k) => {
                let Some((key, v)) =
                    table.and_then(|t| t.iter().find(|(key, _)| key.get_ref().as_ref() == k))
                else {
                    whole = false;
                    break;
                };
                best = Some(key.span().start);
                value = Some(v);
            }
            Seg::Index(n) => {
                let Some(item) = value.and_then(|v| match v.get_ref() {
                    DeValue::Array(items) => items.get(n),
                    _ => None,
                }) else {
                    whole = false;
                    break;
                };
                best = Some(item.span().start);
                value = Some(item);
            }
        }
        table = match value.map(|v| v.get_ref()) {
            Some(DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    if whole
        && let Some(v) = value
        && is_plain(v.get_ref())
    {
        best = Some(v.span().start);
    }
    best.map(|o| line_col(src, o))
}

/// A value written after its key (not a table, nor an array of tables, whose header is where
/// they start).
fn is_plain(v: &DeValue<'_>) -> bool {
    match v {
        DeValue::Table(_) => false,
        DeValue::Array(items) => !items
            .iter()
            .any(|i| matches!(i.get_ref(), DeValue::Table(_))),
        _ => true,
    }
}

/// The key path of the innermost key whose key or value covers `offset`.
pub fn path_at(src: &str, offset: usize) -> String {
    let Ok(root) = DeTable::parse(src) else {
        return String::new();
    };
    let mut path = String::new();
    walk_table(root.get_ref(), offset, &mut path);
    path
}

fn walk_table(t: &DeTable<'_>, offset: usize, path: &mut String) {
    for (k, v) in t.iter() {
        let covers = k.span().contains(&offset) || v.span().contains(&offset);
        let inside_table = matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_));
        if covers || inside_table && contains_deep(v, offset) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k.get_ref().as_ref());
            walk_value(v, offset, path);
            return;
        }
    }
}

fn walk_value(v: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) {
    match v.get_ref() {
        DeValue::Table(t) => walk_table(t, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if contains_deep(item, offset) {
                    path.push_str(&format!("[{i}]"));
                    walk_value(item, offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Array-of-tables and dotted tables have spans that do not cover their keys, so look
/// inside.
fn contains_deep(v: &Spanned<DeValue<'_>>, offset: usize) -> bool {
    if v.span().contains(&offset) {
        return true;
    }
    match v.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .any(|(k, v)| k.span().contains(&offset) || contains_deep(v, offset)),
        DeValue::Array(items) => items.iter().any(|i| contains_deep(i, offset)),
        _ => false,
    }
}
