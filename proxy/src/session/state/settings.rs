//! Session settings under transaction pooling.
//!
//! A client's startup parameters and its session-level `SET`s must hold in every later
//! transaction, whichever backend runs it. The client's settings live here; each backend
//! remembers what the proxy applied to it, and before a backend serves a client the proxy sends
//! only the difference (`SET` what differs, `RESET` what the client never set). When both are
//! equal, nothing is sent.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use shardline_router::StatementKind;

use crate::protocol::encoding::ClientEncoding;

/// Startup parameters that are connection metadata, not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Settings by lower-cased name, each value as SQL text ready for `SET name = <value>`.
///
/// Shared when cloned: a backend synced to a client's settings holds the very map the client
/// has, and the next transaction sees they match by identity instead of comparing them (a
/// change makes the client a map of its own first, so identity always means equality).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    map: Arc<BTreeMap<String, String>>,
    /// What every request reads of the map, read once when the map changes.
    derived: Derived,
}

/// The settings every request consults, kept parsed beside the map.
#[derive(Debug, Clone, Copy, Default)]
struct Derived {
    /// `client_encoding`, if set.
    encoding: Option<ClientEncoding>,
    /// `shardline.show_route`: a NOTICE names the shards of each statement.
    show_route: bool,
}

impl Derived {
    fn of(map: &BTreeMap<String, String>) -> Derived {
        Derived {
            encoding: map
                .get("client_encoding")
                .map(|name| ClientEncoding::named(name)),
            show_route: switch_on(map, "shardline.show_route"),
        }
    }
}

impl Settings {
    /// No settings.
    pub fn new() -> Settings {
        Settings::default()
    }

    /// Sets `name` to `value` (a map shared with backends stays shared when nothing changes).
    pub fn insert(&mut self, name: String, value: String) {
        if self.map.get(&name) != Some(&value) {
            Arc::make_mut(&mut self.map).insert(name, value);
            self.derived = Derived::of(&self.map);
        }
    }

    /// Forgets `name`.
    pub fn remove(&mut self, name: &str) {
        if self.map.contains_key(name) {
            Arc::make_mut(&mut self.map).remove(name);
            self.derived = Derived::of(&self.map);
        }
    }

    /// Forgets every setting.
    pub fn clear(&mut self) {
        if !self.map.is_empty() {
            *self = Settings::default();
        }
    }

    /// Whether both are the same shared map (and so certainly equal).
    pub fn same(&self, other: &Settings) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }

    /// The `client_encoding` set, if any.
    pub fn client_encoding(&self) -> Option<ClientEncoding> {
        self.derived.encoding
    }

    /// Whether the client asked for a NOTICE naming the shards of each statement
    /// (`SET shardline.show_route = on`).
    pub fn show_route(&self) -> bool {
        self.derived.show_route
    }
}

impl Deref for Settings {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &BTreeMap<String, String> {
        &self.map
    }
}

impl PartialEq for Settings {
    fn eq(&self, other: &Settings) -> bool {
        self.same(other) || self.map == other.map
    }
}

impl Eq for Settings {}

impl FromIterator<(String, String)> for Settings {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Settings {
        Settings::from(Arc::new(pairs.into_iter().collect::<BTreeMap<_, _>>()))
    }
}

impl From<Arc<BTreeMap<String, String>>> for Settings {
    fn from(map: Arc<BTreeMap<String, String>>) -> Settings {
        let derived = Derived::of(&map);
        Settings { map, derived }
    }
}

/// The settings a client asked for in its startup packet, including `-c name=value` options.
pub fn from_startup(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut settings = BTreeMap::new();
    for (name, value) in params {
        if !NOT_SETTINGS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
            settings.insert(name.to_ascii_lowercase(), quote_literal(value));
        }
    }
    if let Some(options) = params.get("options") {
        for (name, value) in parse_options(options) {
            settings.insert(name.to_ascii_lowercase(), quote_literal(&value));
        }
    }
    settings
}

/// Parses libpq's `options` (`-c a=b --c=d`, backslash escapes spaces).
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut pairs = Vec::new();
    let mut iter = words.into_iter();
    while let Some(w) = iter.next() {
        let assignment = if w == "-c" {
            iter.next()
        } else {
            w.strip_prefix("--")
                .or_else(|| w.strip_prefix("-c"))
                .map(str::to_owned)
        };
        if let Some((name, value)) = assignment.as_deref().and_then(|a| a.split_once('=')) {
            pairs.push((name.replace('-', "_"), value.to_owned()));
        }
    }
    pairs
}

/// A string as an SQL literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// An identifier, quoted when it needs to be.
fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if plain && !name.is_empty() {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Settings whose `SET` changes only the parts it names (`SET DateStyle = ISO` keeps the
/// day/month order the backend had), so syncing one starts from the server's default.
const MERGED_INTO_CURRENT: &[&str] = &["datestyle"];

/// SQL that turns a backend's applied settings (`None`: unknown) into `wanted`, or `None` when
/// they already match.
pub fn sync_sql(applied: Option<&Settings>, wanted: &Settings) -> Option<String> {
    if applied.is_some_and(|applied| applied.same(wanted)) {
        return None;
    }
    let mut sql = String::new();
    let empty = Settings::new();
    let applied = match applied {
        Some(a) => a,
        None => {
            sql.push_str("RESET ALL;");
            &empty
        }
    };
    for (name, value) in wanted.iter() {
        if applied.get(name) != Some(value) {
            if MERGED_INTO_CURRENT.contains(&name.as_str()) {
                // From the server's default, as a fresh session with this value has it.
                sql.push_str(&format!("RESET {};", quote_ident(name)));
            }
            sql.push_str(&format!("SET {} = {value};", quote_ident(name)));
        }
    }
    for name in applied.keys() {
        if !wanted.contains_key(name) {
            sql.push_str(&format!("RESET {};", quote_ident(name)));
        }
    }
    (!sql.is_empty()).then_some(sql)
}

/// The settings PostgreSQL reports to the client (`ParameterStatus`) at startup and whenever
/// they change; the proxy reports them at login too, even if the backend did not (PgBouncer
/// does the same): drivers look for these.
pub const REPORTED: &[&str] = &[
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "application_name",
    "is_superuser",
    "session_authorization",
    "default_transaction_read_only",
    "in_hot_standby",
];

/// The DateStyle PostgreSQL reports after `value` is set over `current` (`ISO, MDY`): a
/// DateStyle names an output style, a day/month order or both, and keeps the part it does not
/// name (`German` alone also means DMY). `None` for a value this does not read (`DEFAULT`).
pub fn merged_datestyle(value: &str, current: &str) -> Option<String> {
    let words = |text: &str| -> Vec<String> {
        text.trim_matches('\'')
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_uppercase)
            .collect()
    };
    let (mut style, mut order) = (None, None);
    for word in words(current) {
        match word.as_str() {
            "ISO" | "SQL" | "POSTGRES" | "GERMAN" => style = Some(word),
            "YMD" | "DMY" | "MDY" => order = Some(word),
            _ => {}
        }
    }
    let mut named_order = false;
    for word in words(value) {
        match word.as_str() {
            "ISO" | "SQL" | "POSTGRES" => style = Some(word),
            "GERMAN" => {
                style = Some(word);
                if !named_order {
                    order = Some("DMY".to_owned());
                }
            }
            "YMD" | "DMY" | "MDY" => {
                order = Some(word);
                named_order = true;
            }
            "EURO" | "EUROPEAN" => {
                order = Some("DMY".to_owned());
                named_order = true;
            }
            "US" | "NONEURO" | "NONEUROPEAN" => {
                order = Some("MDY".to_owned());
                named_order = true;
            }
            _ => return None,
        }
    }
    let style = match style?.as_str() {
        "ISO" => "ISO",
        "SQL" => "SQL",
        "POSTGRES" => "Postgres",
        _ => "German",
    };
    Some(format!("{style}, {}", order?))
}

/// Whether a statement changes a setting PostgreSQL reports to the client: the client must
/// hear the new value before its next statement (psycopg encodes query text by
/// `client_encoding` and parses dates by `DateStyle`), so it has to run on a server at once.
pub fn changes_reported(kind: &StatementKind) -> bool {
    let reported = |name: &str| REPORTED.iter().any(|r| r.eq_ignore_ascii_case(name));
    match kind {
        StatementKind::Set { name, .. } | StatementKind::Reset { name } => reported(name),
        StatementKind::ResetAll => true,
        _ => false,
    }
}

/// A time setting's value (`100`, `'250ms'`, `'1s'`, `'2min'`; a bare number is in
/// `default_unit`, as PostgreSQL reads it), or `None` when it is zero (off) or unreadable.
pub fn duration_of(value: &str, default_unit: Duration) -> Option<Duration> {
    let text = value.trim().trim_matches('\'').trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit = match unit.trim() {
        "" => default_unit,
        "us" => Duration::from_micros(1),
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        _ => return None,
    };
    // A value too large for a duration (a client may hold any SET) is no limit.
    let duration = Duration::try_from_secs_f64(unit.as_secs_f64() * number).ok()?;
    (!duration.is_zero()).then_some(duration)
}

/// Whether boolean setting `name` (a shardline switch such as `shardline.partial_results`) is
/// on.
pub fn is_on(settings: &Settings, name: &str) -> bool {
    switch_on(&settings.map, name)
}

/// Whether boolean setting `name` of `map` is on.
fn switch_on(map: &BTreeMap<String, String>, name: &str) -> bool {
    map.get(name).is_some_and(|value| {
        matches!(
            value.trim_matches('\'').to_ascii_lowercase().as_str(),
            "on" | "true" | "1" | "yes"
        )
    })
}

/// A session-setting change to record once its statement succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Set { name: String, value: String },
    Reset { name: String },
    ResetAll,
}

/// The setting change a statement makes when it succeeds.
pub fn effect_of(kind: &StatementKind) -> Option<Effect> {
    match kind {
        StatementKind::Set { name, value } if value.eq_ignore_ascii_case("default") => {
            Some(Effect::Reset { name: name.clone() })
        }
        StatementKind::Set { name, value } => Some(Effect::Set {
            name: name.clone(),
            value: value.clone(),
        }),
        StatementKind::Reset { name } => Some(Effect::Reset { name: name.clone() }),
        StatementKind::ResetAll => Some(Effect::ResetAll),
        _ => None,
    }
}

/// Applies recorded effects to a settings map.
pub fn apply_effects(settings: &mut Settings, effects: &[Effect]) {
    for effect in effects {
        match effect {
            Effect::Set { name, value } => {
                settings.insert(name.clone(), value.clone());
            }
            Effect::Reset { name } => {
                settings.remove(name);
            }
            Effect::ResetAll => settings.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_datestyle_as_postgres_does() {
        let cases = [
            ("ISO", "ISO, DMY", Some("ISO, DMY")),
            ("ISO", "Postgres, MDY", Some("ISO, MDY")),
            ("'German'", "ISO, MDY", Some("German, DMY")),
            ("German, YMD", "ISO, MDY", Some("German, YMD")),
            ("YMD, German", "ISO, MDY", Some("German, YMD")),
            ("sql, euro", "ISO, MDY", Some("SQL, DMY")),
            ("Postgres", "ISO, MDY", Some("Postgres, MDY")),
            ("DEFAULT", "ISO, MDY", None),
        ];
        for (value, current, expected) in cases {
            assert_eq!(
                merged_datestyle(value, current).as_deref(),
                expected,
                "{value} over {current}"
            );
        }
    }

    #[test]
    fn reads_time_settings_as_postgres_does() {
        let ms = Duration::from_millis(1);
        let cases = [
            ("100", Some(Duration::from_millis(100))),
            ("'250ms'", Some(Duration::from_millis(250))),
            ("'1.5s'", Some(Duration::from_millis(1500))),
            ("'2min'", Some(Duration::from_secs(120))),
            ("'1 h'", Some(Duration::from_secs(3600))),
            ("0", None),
            ("'0s'", None),
            ("'soon'", None),
            ("'5 fortnights'", None),
            ("99999999999999999999999", None),
        ];
        for (value, expected) in cases {
            assert_eq!(duration_of(value, ms), expected, "{value}");
        }
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sync_sends_only_the_difference() {
        let wanted = settings(&[("application_name", "'a'"), ("statement_timeout", "'5s'")]);
        assert_eq!(sync_sql(Some(&wanted), &wanted), None);
        let applied = settings(&[("application_name", "'b'"), ("search_path", "x")]);
        assert_eq!(
            sync_sql(Some(&applied), &wanted).as_deref(),
            Some("SET application_name = 'a';SET statement_timeout = '5s';RESET search_path;")
        );
        assert_eq!(
            sync_sql(None, &Settings::new()).as_deref(),
            Some("RESET ALL;")
        );
        // `SET DateStyle = ISO` would keep another client's day/month order.
        let iso = settings(&[("datestyle", "'ISO'")]);
        let dmy = settings(&[("datestyle", "'ISO, DMY'")]);
        assert_eq!(
            sync_sql(Some(&dmy), &iso).as_deref(),
            Some("RESET datestyle;SET datestyle = 'ISO';")
        );
    }

    #[test]
    fn startup_options_become_settings() {
        let params: BTreeMap<String, String> = [
            ("user", "app"),
            ("DateStyle", "ISO, MDY"),
            ("options", "-c statement_timeout=5s --search-path=a\\ b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = from_startup(&params);
        assert_eq!(s.get("datestyle").map(String::as_str), Some("'ISO, MDY'"));
        assert_eq!(s.get("statement_timeout").map(String::as_str), Some("'5s'"));
        assert_eq!(s.get("search_path").map(String::as_str), Some("'a b'"));
        assert!(!s.contains_key("user"));
    }
}
