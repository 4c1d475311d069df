//! Row images: how rows of a moving table are read on their old owner and written to their new
//! owner, as SQL both the resharder's backfill and the proxies' dual writes run.
//!
//! A row image is PostgreSQL's own `row_to_json` of the row, applied on the other shard with
//! `json_populate_recordset`, so every column type round-trips without the proxy or the
//! resharder knowing it. Applying an image overwrites (`ON CONFLICT … DO UPDATE`), so applying
//! the same image twice changes nothing.

use crate::key::{KeyType, KeyValue};

/// The columns of a table and the unique key that identifies its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// Every column, in table order.
    pub columns: Vec<String>,
    /// Columns of the primary key, or of a unique index when there is none.
    pub unique_key: Vec<String>,
}

impl TableShape {
    /// An upsert of the JSON array of row images in parameter `$1` (text) into `table`.
    pub fn upsert_sql(&self, table: &str) -> String {
        self.upsert_from(table, "$1::text")
    }

    /// Makes the rows of `keys` on a new owner exactly the `images` read on their old owner
    /// (`row_to_json` texts; none for a key whose rows are gone): rows of those keys that are
    /// not among the images are deleted, the images upserted.
    pub fn apply_sql(
        &self,
        table: &str,
        key_column: &str,
        key_type: KeyType,
        keys: &[KeyValue],
        images: &[String],
    ) -> String {
        let json = literal(&format!("[{}]", images.join(",")));
        let t = ident(table);
        let same_row: Vec<String> = self
            .unique_key
            .iter()
            .map(|c| format!("i.{0} IS NOT DISTINCT FROM d.{0}", ident(c)))
            .collect();
        format!(
            "WITH i AS (SELECT * FROM json_populate_recordset(NULL::{t}, {json}::json)), \
             gone AS (DELETE FROM {t} AS d WHERE d.{k} = ANY({keys}) \
             AND NOT EXISTS (SELECT 1 FROM i WHERE {same})) {upsert}",
            k = ident(key_column),
            keys = key_array(key_type, keys),
            same = same_row.join(" AND "),
            upsert = self.upsert_from(table, &json),
        )
    }

    fn upsert_from(&self, table: &str, json: &str) -> String {
        let key: Vec<String> = self.unique_key.iter().map(|c| ident(c)).collect();
        let updates: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !self.unique_key.contains(c))
            .map(|c| format!("{0} = EXCLUDED.{0}", ident(c)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        format!(
            "INSERT INTO {t} SELECT * FROM json_populate_recordset(NULL::{t}, {json}::json) ON CONFLICT ({}) {on_conflict}",
            key.join(", "),
            t = ident(table),
        )
    }
}

/// Locks `keys` of `table` for the rest of the transaction, whether or not rows exist for
/// them (transaction-level advisory locks, taken in key order so two dual writes cannot
/// deadlock on them): two transactions dual-writing the same key apply their images on the new
/// owner in the order they committed on the old one.
pub fn lock_keys_sql(table: &str, keys: &[KeyValue]) -> String {
    let mut texts: Vec<String> = keys.iter().map(ToString::to_string).collect();
    texts.sort_unstable();
    let list: Vec<String> = texts.iter().map(|k| literal(k)).collect();
    format!(
        "SELECT count(pg_advisory_xact_lock(hashtext({}), hashtext(k))) FROM unnest(ARRAY[{}]::text[]) AS l(k)",
        literal(&format!("shardline:{table}")),
        list.join(", ")
    )
}

/// Reads the current rows of `keys` of `table` as `(key text, row image)`, locked `FOR SHARE`
/// so the image cannot change before the transaction ends.
pub fn read_images_sql(
    table: &str,
    key_column: &str,
    key_type: KeyType,
    keys: &[KeyValue],
) -> String {
    format!(
        "SELECT t.{k}::text, row_to_json(t)::text FROM {t} AS t WHERE t.{k} = ANY({keys}) FOR SHARE OF t",
        k = ident(key_column),
        t = ident(table),
        keys = key_array(key_type, keys),
    )
}

/// `ARRAY[…]::type[]` of `keys`.
fn key_array(key_type: KeyType, keys: &[KeyValue]) -> String {
    let list: Vec<String> = keys.iter().map(|k| literal(&k.sql_text())).collect();
    format!("ARRAY[{}]::{key_type}[]", list.join(", "))
}

/// `name` as a quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a dollar-quoted SQL literal whose tag does not occur in it, so the result means
/// the same under any `standard_conforming_strings`.
pub fn literal(text: &str) -> String {
    let mut tag = String::from("$s$");
    let mut n = 0;
    while text.contains(&tag) {
        n += 1;
        tag = format!("$s{n}$");
    }
    format!("{tag}{text}{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_never_end_early() {
        assert_eq!(literal("it's"), "$s$it's$s$");
        assert_eq!(literal("a$s$b"), "$s1$a$s$b$s1$");
    }

    #[test]
    fn apply_deletes_what_the_images_lack_and_upserts_the_rest() {
        let shape = TableShape {
            columns: vec!["id".into(), "name".into()],
            unique_key: vec!["id".into()],
        };
        let sql = shape.apply_sql(
            "users",
            "id",
            KeyType::Int8,
            &[KeyValue::Int(7)],
            &[r#"{"id":7,"name":"a"}"#.to_owned()],
        );
        assert!(
            sql.contains("DELETE FROM \"users\" AS d WHERE d.\"id\" = ANY(ARRAY[$s$7$s$]::int8[])")
        );
        assert!(sql.contains("ON CONFLICT (\"id\") DO UPDATE SET \"name\" = EXCLUDED.\"name\""));
        // Text keys are compared as their own text, not as the quoted form messages show.
        let sql = read_images_sql(
            "docs",
            "owner",
            KeyType::Text,
            &[KeyValue::Text("o'k".into())],
        );
        assert!(sql.contains("ANY(ARRAY[$s$o'k$s$]::text[])"), "{sql}");
    }
}
