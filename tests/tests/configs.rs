//! The configuration files shipped in the repository load, and the docker compose file mounts
//! the one that is checked here.

use shardline_router::Config;

fn load(path: &str) -> Config {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    Config::from_yaml(&text).unwrap_or_else(|e| panic!("{path} is invalid: {e}"))
}

#[test]
fn repository_configs_are_valid() {
    let demo = load("shards.yaml");
    assert_eq!(demo.shards.len(), 4);
    for table in ["users", "orders", "events", "countries"] {
        assert!(demo.table(table).is_some(), "shards.yaml lacks {table}");
    }
    let docker = load("docker/shards.yaml");
    assert_eq!(docker.shards.len(), 2);
    let compose = std::fs::read_to_string(format!(
        "{}/../docker/compose.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_default();
    assert!(
        compose.contains("./shards.yaml:/etc/shardline/shards.yaml"),
        "compose must mount docker/shards.yaml"
    );
}
